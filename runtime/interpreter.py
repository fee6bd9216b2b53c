"""CPU reference interpreter of the task table: exactly the program the kernel runs.

It reads the artifact's serialized task table and executes it task by task, in an order
the dependency counters allow (each SM's list in order, SMs interleaved), each task
reading and writing only its own slices of the same two arenas the kernel uses. All
arithmetic is float32. The activation arena starts as NaN, so reading anything no task
(or earlier step) wrote poisons the logits instead of passing silently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from tilert_compiler.ir.kinds import KINDS
from tilert_compiler.ir.lm_parts import AT, BEST, part_floats
from tilert_compiler.ir.precision import scale_cols
from tilert_compiler.ir.tasktable import (
    F_KIND,
    F_NSTREAM,
    F_SIGNAL,
    F_STREAM,
    TaskTable,
)
from tilert_compiler.runtime.arena import act_arena, weights_arena
from tilert_compiler.runtime.artifact import Artifact
from tilert_compiler.runtime.generate import generate_on
from tilert_compiler.runtime.prefill import PrefillReference, check_prompt
from tilert_compiler.runtime.sampling import Sampling, draw_from_parts, lm_head_part


class InterpreterError(RuntimeError):
    pass


class Interpreter:
    """A Decoder (runtime/decoder.py) on the CPU: the artifact's task table run in float32."""

    def __init__(self, art: Artifact, weights: dict[str, torch.Tensor] | torch.Tensor):
        """`weights`: a dict or (name, tensor) pairs, packed here into a float32 arena; or a
        packed arena, float32 or bf16 (the kernel's own values at half the host memory:
        each weight is read as float32 where a task uses it). An artifact with FP8 weights
        always packs a bf16 arena (raw 2-byte units)."""
        self.art = art
        self.table: TaskTable = art.table
        m = art.manifest
        self.eps = float(m["norm_eps"])
        self.inv_freq = torch.tensor(m["rope_inv_freq"], dtype=torch.float32)
        # With FP8 weights the arena is packed raw (2-byte units, bf16 where a weight is
        # bf16): self.B its bytes, the FP8 rows decoded where a GEMV streams them.
        bf16 = art.fp8 or (isinstance(weights, torch.Tensor) and weights.dtype == torch.bfloat16)
        self.W = weights_arena(art, weights, torch.bfloat16 if bf16 else torch.float32)
        self.B: torch.Tensor | None = self.W.view(torch.uint8) if art.fp8 else None
        self.A = act_arena(art)
        self.counters = [0] * m["counters"]
        self.epoch = 0
        self.vocab = int(m["config"]["vocab"])
        # With flags the GEMV and attention tasks poll their inputs' data (passes.deps); the
        # task table does not say whose outputs those are, so such a task runs here once
        # every task before it in the global order has run: a valid order, the same values.
        flags = bool(m.get("options", {}).get("flags"))
        self._polls = [
            flags and KINDS[self.table.variants[int(k)].kind].polls
            for k in self.table.records[:, F_KIND]
        ]
        self._next = 0  # this step: the lowest task id not run yet
        self.logits_at = art.tensor("logits")["offset"]
        self.max_seq_len = int(m["config"]["max_seq_len"])
        # The prefill program's reference (runtime/prefill.py), rounding where its kernels
        # round; tiles_bf16=False keeps it float32 (a check of the program itself).
        self._tiles = None
        if art.tiles is not None:  # FP8 GEMMs read the raw arena's rows
            w = self.W if self.B is None else self.B.view(torch.bfloat16)
            self._tiles = PrefillReference(m, art.tiles[0], w, self.A)
        self.trace: list[int] = []  # task ids in execution order, last step
        self._mode: Sampling | None = None  # the sample task's rules (None: logits only)
        self._n_forced, self._step_i, self._sampled = 1, 0, -1

    # ------------------------------------------------------------ driver
    def step(self, token: int, pos: int) -> torch.Tensor:
        """One decode step; returns float32 logits [vocab]."""
        self._check(token, pos)
        self._mode = None  # the sample task does nothing: logits only
        self._run_step(int(token), int(pos), 0)
        return self.A[self.logits_at : self.logits_at + self.vocab].clone()

    def run(
        self,
        tokens: Sequence[int],
        pos: int,
        n_steps: int,
        sampling: Sampling,
        stop_ids: Sequence[int] = (),
        on_token: Callable[[int], None] | None = None,
    ) -> list[int]:
        """What one multi-step launch of the kernel does: step i feeds tokens[i] while the
        given tokens last (the prompt), then the token step i - 1 sampled, at pos + i; the
        sample task draws from step i's logits once the given tokens are used up. Returns
        the drawn tokens, ending at a stop id or after n_steps steps."""
        given = [int(t) for t in tokens]
        if not 1 <= len(given) <= n_steps:
            raise InterpreterError(f"{len(given)} given tokens for {n_steps} steps")
        self._check(given[0], pos + n_steps - 1)
        self._mode, self._n_forced = sampling, len(given)
        out: list[int] = []
        for i in range(n_steps):
            if i < len(given):
                tok = given[i]
            else:
                tok = out[-1]
                if tok in stop_ids:
                    break
            self._check(tok, pos + i)
            self._run_step(tok, pos + i, i)
            if i + 1 >= len(given):
                out.append(self._sampled)
                if on_token is not None:
                    on_token(self._sampled)
        return out

    def prefill(self, tokens: Sequence[int], pos: int = 0) -> None:
        """Write the KV cache rows of `tokens` at pos, pos + 1, ... (their logits are not
        computed): the prefill program, a chunk at a time, or decode steps when the artifact
        has none."""
        toks = [int(t) for t in tokens]
        check_prompt(len(toks), pos, self.max_seq_len)  # empty, or past the cache: refused
        for i, tok in enumerate(toks):
            self._check(tok, pos + i)
        if self._tiles is not None:
            self._tiles.run(toks, pos)
            return
        for i, tok in enumerate(toks):
            self.step(tok, pos + i)

    @property
    def prefill_chunk(self) -> int:
        """Prompt tokens per prefill chunk (1: no prefill program, prompts run as decode
        steps)."""
        return int(self._tiles.spec["chunk"]) if self._tiles is not None else 1

    def _check(self, token: int, pos: int) -> None:
        if not 0 <= pos < self.max_seq_len:
            raise InterpreterError(
                f"pos {pos} is outside the KV cache (max_seq_len {self.max_seq_len})"
            )
        if not 0 <= token < self.vocab:
            raise InterpreterError(f"token {token} is outside the vocabulary (0..{self.vocab - 1})")

    def _run_step(self, token: int, pos: int, i: int) -> None:
        self.epoch += 1
        self.token, self.pos, self._step_i = token, pos, i
        t = self.table
        heads = [int(t.sm_start[s]) for s in range(len(t.sm_start) - 1)]
        ends = [int(t.sm_start[s + 1]) for s in range(len(t.sm_start) - 1)]
        self.trace = []
        remaining = len(t.records)
        ran = [False] * remaining
        self._next = 0
        while remaining:
            progress = False
            for sm in range(len(heads)):
                while heads[sm] < ends[sm]:
                    task = int(t.sm_tasks[heads[sm]])
                    if not self._ready(task):
                        break
                    self._run(task)
                    if t.records[task, F_SIGNAL] >= 0:  # -1: read only by polling tasks
                        self.counters[int(t.records[task, F_SIGNAL])] += 1
                    self.trace.append(task)
                    ran[task] = True
                    while self._next < len(ran) and ran[self._next]:
                        self._next += 1
                    heads[sm] += 1
                    remaining -= 1
                    progress = True
            if not progress:
                raise InterpreterError(f"step {self.epoch}: no task can run (deadlock)")

    def generate(self, prompt_ids, max_new_tokens: int, **kw) -> list[int]:
        """runtime.generate.generate on this interpreter, from a fresh cache."""
        return generate_on(self, prompt_ids, max_new_tokens, **kw)

    def reset(self) -> None:
        """Forget the cache (poisoned again) and restart the counters."""
        self.A.fill_(float("nan"))
        self.counters = [0] * len(self.counters)
        self.epoch = 0

    def _ready(self, task: int) -> bool:
        if self._polls[task] and task != self._next:
            return False
        return all(self.counters[c] >= self.epoch * n for c, n in self.table.waits_of(task))

    def _run(self, task: int) -> None:
        self._task = task
        v = self.table.variants[int(self.table.records[task, F_KIND])]
        getattr(self, KINDS[v.kind].interpreter)(self.table.args(task), dict(v.static))

    # ------------------------------------------------------------ helpers
    def _act(self, at: int, n: int) -> torch.Tensor:
        return self.A[at : at + n]

    def _mat(self, at: int, rows: int, k: int) -> torch.Tensor:
        return self.W[at : at + rows * k].view(rows, k).float()

    def _rmsnorm(self, x: torch.Tensor, gamma_at: int) -> torch.Tensor:
        g = self.W[gamma_at : gamma_at + x.numel()].float()
        return x * torch.rsqrt(x.pow(2).mean() + self.eps) * g

    def _rope(self, y: torch.Tensor, pos: int) -> torch.Tensor:
        half = y.numel() // 2
        ang = torch.tensor(float(pos), dtype=torch.float32) * self.inv_freq
        c, s = ang.cos(), ang.sin()
        lo, hi = y[:half], y[half:]
        return torch.cat([lo * c - hi * s, hi * c + lo * s])

    # ------------------------------------------------------------ task kinds
    def _embed(self, a: dict, s: dict) -> None:
        src = a["w_table"] + self.token * s["D"]
        self._act(a["out"], a["rows"])[:] = self.W[src : src + a["rows"]]

    def _attention_decode(self, a: dict, s: dict) -> None:
        """Split-KV attention of one kv head for this step's row at pos. Split sp covers the
        earlier cache rows [lo, hi) of [0, pos); the last split also this step's row."""
        HD, G, H, KV, S, NS = s["HD"], s["G"], s["H"], s["KV"], s["S"], s["NSPLIT"]
        g, sp, pos = a["head"], a["split"], self.pos
        q = self._act(a["qkv"] + g * G * HD, G * HD).view(G, HD)
        k_new = self._act(a["qkv"] + (H + g) * HD, HD)
        v_new = self._act(a["qkv"] + (H + KV + g) * HD, HD)
        if s["QKN"]:
            q = torch.stack([self._rmsnorm(q[i], a["w_q_gamma"]) for i in range(G)])
            k_new = self._rmsnorm(k_new, a["w_k_gamma"])
        q = torch.stack([self._rope(q[i], pos) for i in range(G)])  # [G, HD]
        k_new = self._rope(k_new, pos)
        kc, vc = a["k_cache"] + g * S * HD, a["v_cache"] + g * S * HD
        last = sp == NS - 1
        if last:  # this step's cache row
            self._act(kc + pos * HD, HD)[:] = k_new
            self._act(vc + pos * HD, HD)[:] = v_new
        chunk = -(-pos // NS)
        lo = min(sp * chunk, pos)
        hi = min(lo + chunk, pos)
        keys = self._act(kc + lo * HD, (hi - lo) * HD).view(-1, HD)  # earlier steps' rows
        vals = self._act(vc + lo * HD, (hi - lo) * HD).view(-1, HD)
        if last:
            keys, vals = torch.cat([keys, k_new[None]]), torch.cat([vals, v_new[None]])
        scores = (q @ keys.T) * HD**-0.5  # [G, keys]
        part = self._act(a["part"] + (g * NS + sp) * G * (HD + 2), G * (HD + 2)).view(G, HD + 2)
        if len(keys):
            mx = scores.max(dim=-1).values
            p = torch.exp(scores - mx[:, None])
            part[:, :HD], part[:, HD], part[:, HD + 1] = p @ vals, mx, p.sum(dim=-1)
        else:  # an empty split: no mass
            part[:, :HD], part[:, HD], part[:, HD + 1] = 0.0, float("-inf"), 0.0
        # The last of g's splits to arrive combines (whichever it is, as on the GPU).
        self.counters[a["arrive"]] += 1
        if self.counters[a["arrive"]] != self.epoch * NS:
            return
        parts = self._act(a["part"] + g * NS * G * (HD + 2), NS * G * (HD + 2)).view(NS, G, HD + 2)
        mx = parts[:, :, HD].max(dim=0).values  # [G]
        w = torch.exp(parts[:, :, HD] - mx)  # [NS, G]
        o = (parts[:, :, :HD] * w[:, :, None]).sum(0) / (parts[:, :, HD + 1] * w).sum(0)[:, None]
        self._act(a["out"] + g * G * HD, G * HD)[:] = o.reshape(-1)

    def _fp8_mat(self, at: int, units: int, row_units: int, k: int, qbk: int) -> torch.Tensor:
        """FP8 rows at arena unit `at` (ir/precision.py: e4m3 values, then one float32
        scale per k-block of qbk columns) dequantized as models.quant.dequantize does:
        float(e4m3) * scale, in float32. [rows, k]."""
        rows = self.B[2 * at : 2 * (at + units)].view(units // row_units, 2 * row_units)
        g = scale_cols(k, qbk)
        data = rows[:, :k].contiguous().view(torch.float8_e4m3fn).float()
        scale = rows[:, k : k + 4 * g].contiguous().view(torch.float32)
        return data * scale.repeat_interleave(qbk, 1)[:, :k]

    def _stream_dot(self, k: int, rows: int, x: torch.Tensor, qbk: int = 0) -> torch.Tensor:
        """[rows] dot products of the task's weight rows with x, the rows taken as the kernel
        gets them: its stream entries, in order (the ring producer copies exactly these).
        qbk: FP8 rows with scales per k-block of qbk columns (0: bf16)."""
        at = int(self.table.records[self._task, F_STREAM])
        n = int(self.table.records[self._task, F_NSTREAM])
        y = torch.cat(
            [
                (
                    self._fp8_mat(int(off), int(el), int(ru), k, qbk)
                    if qbk
                    else self._mat(int(off), int(el) // k, k)
                )
                @ x
                for off, el, ru in self.table.stream[at : at + n]
            ]
        )
        if y.numel() != rows:
            raise InterpreterError(f"t{self._task}: stream holds {y.numel()} rows, needs {rows}")
        return y

    def _linear_residual(self, a: dict, s: dict) -> None:
        K, rows = s["K"], a["rows"]
        y = self._stream_dot(K, rows, self._act(a["x"], K), s.get("QBK", 0))
        self._act(a["out"], rows)[:] = self._act(a["residual"], rows) + y

    def _gate_up_silu(self, a: dict, s: dict) -> None:
        K, rows = s["K"], a["rows"]
        xn = self._rmsnorm(self._act(a["x"], K), a["w_gamma"])
        y = self._stream_dot(K, 2 * rows, xn, s.get("QBK", 0))  # gate rows, then up rows
        self._act(a["out"], rows)[:] = torch.nn.functional.silu(y[:rows]) * y[rows:]

    def _draws(self) -> bool:
        """This step draws a sampled token (not greedy, not logits only, not a prompt step
        whose next token is given): the LM head writes its whole partials."""
        m = self._mode
        return m is not None and not m.greedy and self._step_i + 1 >= self._n_forced

    def _sample(self, a: dict, s: dict) -> None:
        if self._mode is None or self._step_i + 1 < self._n_forced:
            return  # logits only, or the prompt gives the next token
        n = part_floats(s["C"])
        parts = self._act(a["parts"], n * a["n_parts"]).view(-1, n)
        if self._mode.greedy:  # the LM head tasks' partials: the first of the largest
            best = parts[:, BEST].max()
            tok = int(parts[parts[:, BEST] == best, AT].min())
        else:
            tok = draw_from_parts(parts, self._act(a["logits"], a["vocab"]), self._mode, self.pos)
        self._act(a["out"], 1)[0] = float(tok)
        self._sampled = tok

    def _norm_linear(self, a: dict, s: dict) -> None:
        K, rows = s["K"], a["rows"]
        xn = self._rmsnorm(self._act(a["x"], K), a["w_gamma"])
        y = self._stream_dot(K, rows, xn, s.get("QBK", 0))
        self._act(a["out"], rows)[:] = y
        if s["CANDS"]:  # the LM head: the task's partial (ir/lm_parts.py)
            part = self._act(a["part_out"], part_floats(s["CANDS"]))
            if self._draws():
                part[:] = lm_head_part(y, a["row0"], self._mode.temperature, s["CANDS"])
            else:  # the largest and its first index: what greedy reads
                i = int(torch.argmax(y))
                part[BEST], part[AT] = y[i], float(a["row0"] + i)
