"""CPU reference interpreter of the task table: exactly the program the kernel runs.

It reads the artifact's serialized task table and executes it task by task, in an order
the dependency counters allow (each SM's list in order, SMs interleaved), each task
reading and writing only its own slices of the same two arenas the kernel uses. All
arithmetic is float32. The activation arena starts as NaN, so reading anything no task
(or earlier step) wrote poisons the logits instead of passing silently.
"""

from __future__ import annotations

import torch

from tilert_compiler.ir.tasktable import F_KIND, F_SIGNAL, TaskTable
from tilert_compiler.runtime.artifact import Artifact


class InterpreterError(RuntimeError):
    pass


def pack_weights(art: Artifact, weights: dict[str, torch.Tensor], dtype, device="cpu"):
    """The weights arena: every weight tensor flattened at its manifest offset."""
    arena = torch.zeros(art.manifest["arenas"]["weights"], dtype=dtype, device=device)
    for t in art.manifest["tensors"]:
        if t["arena"] != "weights":
            continue
        w = weights.get(t["name"])
        if w is None:
            raise InterpreterError(f"weights: missing tensor '{t['name']}'")
        if tuple(w.shape) != tuple(t["shape"]):
            raise InterpreterError(
                f"weights: '{t['name']}' has shape {tuple(w.shape)}, the artifact expects "
                f"{tuple(t['shape'])}"
            )
        n = w.numel()
        arena[t["offset"] : t["offset"] + n].copy_(w.reshape(-1).to(dtype))
    return arena


class Interpreter:
    def __init__(self, art: Artifact, weights: dict[str, torch.Tensor]):
        self.art = art
        self.table: TaskTable = art.table
        m = art.manifest
        self.eps = float(m["norm_eps"])
        self.inv_freq = torch.tensor(m["rope_inv_freq"], dtype=torch.float32)
        self.W = pack_weights(art, weights, torch.float32)
        self.A = torch.full((m["arenas"]["act"],), float("nan"), dtype=torch.float32)
        self.counters = [0] * m["counters"]
        self.epoch = 0
        lg = art.tensor("logits")
        self.logits_at, self.vocab = lg["offset"], lg["shape"][0]
        self.trace: list[int] = []  # task ids in execution order, last step

    # ------------------------------------------------------------ driver
    def step(self, token: int, pos: int) -> torch.Tensor:
        """One decode step; returns float32 logits [vocab]."""
        self.epoch += 1
        self.token, self.pos = int(token), int(pos)
        t = self.table
        heads = [int(t.sm_start[s]) for s in range(len(t.sm_start) - 1)]
        ends = [int(t.sm_start[s + 1]) for s in range(len(t.sm_start) - 1)]
        self.trace = []
        remaining = len(t.records)
        while remaining:
            progress = False
            for sm in range(len(heads)):
                while heads[sm] < ends[sm]:
                    task = int(t.sm_tasks[heads[sm]])
                    if not self._ready(task):
                        break
                    self._run(task)
                    self.counters[int(t.records[task, F_SIGNAL])] += 1
                    self.trace.append(task)
                    heads[sm] += 1
                    remaining -= 1
                    progress = True
            if not progress:
                raise InterpreterError(f"step {self.epoch}: no task can run (deadlock)")
        return self.A[self.logits_at : self.logits_at + self.vocab].clone()

    def _ready(self, task: int) -> bool:
        return all(self.counters[c] >= self.epoch * n for c, n in self.table.waits_of(task))

    def _run(self, task: int) -> None:
        v = self.table.variants[int(self.table.records[task, F_KIND])]
        getattr(self, "_" + v.kind)(self.table.args(task), dict(v.static))

    # ------------------------------------------------------------ helpers
    def _act(self, at: int, n: int) -> torch.Tensor:
        return self.A[at : at + n]

    def _mat(self, at: int, rows: int, k: int) -> torch.Tensor:
        return self.W[at : at + rows * k].view(rows, k)

    def _rmsnorm(self, x: torch.Tensor, gamma_at: int) -> torch.Tensor:
        g = self.W[gamma_at : gamma_at + x.numel()]
        return x * torch.rsqrt(x.pow(2).mean() + self.eps) * g

    def _rope(self, y: torch.Tensor) -> torch.Tensor:
        half = y.numel() // 2
        ang = torch.tensor(float(self.pos), dtype=torch.float32) * self.inv_freq
        c, s = ang.cos(), ang.sin()
        lo, hi = y[:half], y[half:]
        return torch.cat([lo * c - hi * s, hi * c + lo * s])

    # ------------------------------------------------------------ task kinds
    def _embed(self, a: dict, s: dict) -> None:
        src = a["w_table"] + self.token * s["D"]
        self._act(a["out"], a["rows"])[:] = self.W[src : src + a["rows"]]

    def _qkv_rope_cache(self, a: dict, s: dict) -> None:
        K, HD = s["K"], s["HD"]
        xn = self._rmsnorm(self._act(a["x"], K), a["w_gamma"])
        heads = [a["w_a"], a["w_b"]] if a["is_kv"] else [a["w_a"]]
        outs = [a["out_a"], a["out_b"]] if a["is_kv"] else [a["out_a"]]
        for j, (w_at, out_at) in enumerate(zip(heads, outs, strict=True)):
            y = self._mat(w_at, HD, K) @ xn
            if j == 0:  # q, or k: head norm then rope; v goes to the cache as is
                if s["QKN"]:
                    y = self._rmsnorm(y, a["w_head_gamma"])
                y = self._rope(y)
            row = self.pos * HD if a["is_kv"] else 0
            self._act(out_at + row, HD)[:] = y

    def _attention(self, a: dict, s: dict) -> None:
        HD, n = s["HD"], self.pos + 1
        q = self._act(a["q"], HD)
        k = self._act(a["k"], n * HD).view(n, HD)
        v = self._act(a["v"], n * HD).view(n, HD)
        p = torch.softmax((k @ q) * HD**-0.5, dim=0)
        self._act(a["out"], HD)[:] = p @ v

    def _linear_residual(self, a: dict, s: dict) -> None:
        K, rows = s["K"], a["rows"]
        y = self._mat(a["w"], rows, K) @ self._act(a["x"], K)
        self._act(a["out"], rows)[:] = self._act(a["residual"], rows) + y

    def _gate_up_silu(self, a: dict, s: dict) -> None:
        K, rows = s["K"], a["rows"]
        xn = self._rmsnorm(self._act(a["x"], K), a["w_gamma"])
        g = self._mat(a["w_gate"], rows, K) @ xn
        u = self._mat(a["w_up"], rows, K) @ xn
        self._act(a["out"], rows)[:] = torch.nn.functional.silu(g) * u

    def _norm_linear(self, a: dict, s: dict) -> None:
        K, rows = s["K"], a["rows"]
        xn = self._rmsnorm(self._act(a["x"], K), a["w_gamma"])
        self._act(a["out"], rows)[:] = self._mat(a["w"], rows, K) @ xn
