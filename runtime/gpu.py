"""The GPU runtime: load an artifact's cubin through the CUDA driver API, hold weights, KV
cache and activations as torch CUDA tensors, launch one persistent kernel per step.

Needs torch and cuda-bindings only. The kernel spin-waits across CTAs, so every CTA must
be resident at once: it is launched cooperatively (the driver refuses a grid that cannot
be co-resident) after an occupancy check that names the problem.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections import Counter as Tally
from collections.abc import Callable, Sequence

import numpy as np
import torch

from tilert_compiler.ir.kinds import KINDS
from tilert_compiler.ir.tasktable import (
    ERR_BAD_KIND,
    ERR_INPUT_TIMEOUT,
    ERR_STREAM_TIMEOUT,
    ERR_TIMEOUT,
    F_KIND,
    F_SIGNAL,
    MODE_GREEDY,
    MODE_LOGITS,
    MODE_SAMPLED,
    PARAMS,
    PROFILE_WORDS,
    RING_WAIT_COPY,
    RING_WAIT_FREE,
    RING_WAIT_STAGE,
)
from tilert_compiler.models.config import load_config
from tilert_compiler.models.weights import stream_weights
from tilert_compiler.runtime.arena import act_arena, weights_arena
from tilert_compiler.runtime.artifact import Artifact, ArtifactError, load_artifact
from tilert_compiler.runtime.cuda_driver import checked
from tilert_compiler.runtime.generate import generate_on
from tilert_compiler.runtime.prefill import GpuPrefill, check_prompt
from tilert_compiler.runtime.sampling import GREEDY, GenerationError, Sampling

ERROR_WORDS = 8
HOST_HALT = -1  # the error code the host writes to stop a launch (GpuModel._halt)
_ERR_NAMES = {
    ERR_TIMEOUT: "dependency wait timed out",
    ERR_BAD_KIND: "unknown task kind in the task table",
    ERR_STREAM_TIMEOUT: "weight-ring wait timed out",
    ERR_INPUT_TIMEOUT: "input wait timed out",  # flags: an input never got this step's parity
}


# What a weight-ring wait was for (the kernel's `which`, reported as word 5).
_RING_WAITS = {
    RING_WAIT_STAGE: "the ring stage's weights never landed (a consumer waited)",
    RING_WAIT_COPY: "the producer's earlier copy never landed",
    RING_WAIT_FREE: "the consumers never released a ring stage (the producer waited)",
}


def describe_error(e: Sequence[int], where: str) -> str:
    """The message for the kernel's error words e = (code, sm, task, counter, value,
    expected, ...), as `report` writes them; `where`: which launch."""
    what = _ERR_NAMES.get(e[0], f"error {e[0]}")
    if e[0] == ERR_INPUT_TIMEOUT:
        at = f"its input at act offset {e[4]} never carried parity {e[5]}"
    elif e[0] == ERR_STREAM_TIMEOUT:
        at = f"{_RING_WAITS.get(e[5], f'ring wait {e[5]}')}, phase parity {e[4]}"
    elif e[0] == ERR_BAD_KIND:
        at = f"kind {e[4]}"
    else:
        at = f"counter c{e[3]} = {e[4]}, expected >= {e[5]}"
    return (
        f"{what}: sm {e[1]}, task t{e[2]}, {at} ({where}); the counters are now stale, call reset()"
    )


class KernelError(RuntimeError):
    """The kernel stopped itself (bounded wait expired, bad table) and said where."""


# ctypes of ir/tasktable.py's Param types (every pointer: c_void_p)
_CTYPES = {
    "i32": ctypes.c_int32,
    "u32": ctypes.c_uint32,
    "f32": ctypes.c_float,
    "u64": ctypes.c_uint64,
}


class _Params(ctypes.Structure):
    """The kernel's Params, field for field: both are built from ir/tasktable.py PARAMS."""

    _fields_ = [
        (f.name, ctypes.c_void_p if f.type.endswith("*") else _CTYPES[f.type]) for f in PARAMS
    ]


MAX_STOP_IDS = 64


def check_device(path, m: dict, device: int = 0) -> None:
    """The artifact's arch and SM count against this GPU (before any weights are packed)."""
    props = torch.cuda.get_device_properties(device)
    have, want = f"{props.major}{props.minor}", m["arch"].removeprefix("sm_").rstrip("a")
    if have != want:
        raise ArtifactError(
            f"{path}: built for {m['arch']}, this GPU is sm_{have} ({props.name}); "
            "recompile with --target for this GPU"
        )
    if props.multi_processor_count < m["sms"]:
        raise ArtifactError(
            f"{path}: schedule needs {m['sms']} SMs, {props.name} has "
            f"{props.multi_processor_count}; recompile with --sms {props.multi_processor_count}"
        )


def _load_kernel(art: Artifact):
    """(module, function) of the artifact's kernel, its dynamic shared memory raised, after
    checking that one CTA fits an SM."""
    from cuda.bindings import driver

    m = art.manifest
    module = checked(driver.cuModuleLoadData(art.cubin), "loading the cubin")
    fn = checked(
        driver.cuModuleGetFunction(module, m["kernel"].encode()), f"finding kernel {m['kernel']}"
    )
    smem = int(m["smem_bytes"])
    attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    checked(driver.cuFuncSetAttribute(fn, attr, smem), "raising dynamic smem")
    per_sm = checked(
        driver.cuOccupancyMaxActiveBlocksPerMultiprocessor(fn, m["threads"], smem),
        "occupancy query",
    )
    if per_sm < 1:
        raise KernelError(
            f"the kernel {m['kernel']} cannot run one CTA of {m['threads']} threads with {smem} "
            "B of shared memory per SM; recompile with a smaller max_seq_len"
        )
    return module, fn


class _Program:
    """The artifact's decode program on the GPU: its task table, counters and profile buffer
    in device memory, its kernel, and the kernel's Params with every buffer address set
    once (the buffers live as long as the model; a launch sets only what varies)."""

    def __init__(self, art: Artifact, dev, w, act, error, profiled: bool):
        m, t = art.manifest, art.table
        self.art, self.smem = art, int(m["smem_bytes"])
        # The step's activations (not the KV cache): with flags they carry their step's
        # parity, so restarting the epochs must first forget them (see restart()).
        steps = [x for x in m["tensors"] if x["arena"] == "act" and x["storage"] == "act"]
        self._acts = [act[x["offset"] : x["offset"] + int(np.prod(x["shape"]))] for x in steps]
        self.records = torch.from_numpy(t.records).to(dev)
        self.waits = torch.from_numpy(t.waits.reshape(-1)).to(dev)
        self.stream = torch.from_numpy(t.stream.reshape(-1)).to(dev)
        self.sm_start = torch.from_numpy(t.sm_start).to(dev)
        self.sm_tasks = torch.from_numpy(t.sm_tasks).to(dev)
        self.counters = torch.zeros(m["counters"], dtype=torch.int32, device=dev)
        n_prof = len(t.records) if profiled else 0  # profiled builds: the last launch's stamps
        self.profile = torch.zeros((n_prof, PROFILE_WORDS), dtype=torch.int64, device=dev)
        # The largest per-step increment any counter sees: dependency waits and the split
        # attention's arrival counters (one arrival per task with that `arrive` argument).
        arrive = [t.args(i).get("arrive") for i in range(len(t.records))]
        arrivals = Tally(a for a in arrive if a is not None)
        self.max_producers = max(
            [int(t.waits[:, 1].max()) if len(t.waits) else 1, *arrivals.values()]
        )
        self.module, self.fn = _load_kernel(art)
        p = self.params = _Params()
        self.argv = (ctypes.c_void_p * 1)(ctypes.addressof(p))
        p.tasks, p.waits = self.records.data_ptr(), self.waits.data_ptr()
        p.sm_start = self.sm_start.data_ptr()
        p.stream, p.sm_tasks = self.stream.data_ptr(), self.sm_tasks.data_ptr()
        p.w, p.act = w.data_ptr(), act.data_ptr()
        p.counters, p.error = self.counters.data_ptr(), error.data_ptr()
        p.profile = self.profile.data_ptr() if profiled else None

    def restart(self) -> None:
        """Counters to 0 for epoch 1 next (the caller resets its epoch count); the step's
        activations to NaN (parity 0), so none passes for epoch 1's data (parity 1)."""
        self.counters.zero_()
        self.forget()

    def room_for(self, epoch: int, steps: int, device) -> int:
        """The epoch count to run `steps` more steps from: `epoch`, or 0 after a restart.
        Counters are 32-bit and monotonic (step e waits for e * producers): before that
        product could wrap, they restart at 0 (the KV cache is kept)."""
        if (epoch + steps) * self.max_producers < 2**31:
            return epoch
        torch.cuda.synchronize(device)
        self.restart()
        return 0

    def forget(self) -> None:
        """The step's activations to NaN (on the stream, after what is enqueued)."""
        for a in self._acts:
            a.fill_(float("nan"))

    def launch(self, device, what: str) -> None:
        """One cooperative launch with the Params as they are, on the current stream."""
        from cuda.bindings import driver

        m = self.art.manifest
        stream = torch.cuda.current_stream(device).cuda_stream
        grid, block = (m["sms"], 1, 1), (m["threads"], 1, 1)
        argv = ctypes.addressof(self.argv)
        checked(
            driver.cuLaunchCooperativeKernel(self.fn, *grid, *block, self.smem, stream, argv),
            what,
        )


class GpuModel:
    """A Decoder (runtime/decoder.py) on the GPU: the artifact's cubin, launched once per
    step or once per request."""

    def __init__(
        self,
        path: str | os.PathLike,
        weights: dict | torch.Tensor | None = None,
        *,
        device: int = 0,
        timeout_ms: int | None = None,
    ):
        from cuda.bindings import driver

        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device: use CompiledModel.interpret on the CPU")
        self.art: Artifact = load_artifact(path, need_cubin=True)
        m = self.art.manifest
        torch.cuda.set_device(device)
        self.device = torch.device("cuda", device)
        check_device(path, m, device)
        dev = self.device
        if weights is None:
            weights = stream_weights(load_config(m["config"]))  # a tensor at a time
        self.w = weights_arena(self.art, weights, torch.bfloat16, dev)
        self.act = act_arena(self.art, device=dev)
        t = self.art.table
        self.error = torch.zeros(ERROR_WORDS, dtype=torch.int32, device=dev)
        self._halt_word = torch.tensor([HOST_HALT], dtype=torch.int32).pin_memory()
        self.profiled = bool(m.get("options", {}).get("profile"))
        lg = self.art.tensor("logits")
        self.logits = self.act[lg["offset"] : lg["offset"] + lg["shape"][0]]
        self.vocab = lg["shape"][0]
        self.max_seq_len = int(m["config"]["max_seq_len"])
        self.timeout_ns = int((timeout_ms or m.get("wait_timeout_ms", 1000)) * 1e6)
        self.epoch = 0
        torch.cuda.synchronize()
        self._decode = _Program(self.art, dev, self.w, self.act, self.error, self.profiled)
        self.counters, self.profile = self._decode.counters, self._decode.profile
        # Multi-step launches: the tokens steps feed, stop ids, and the sample task's
        # counter (the step gate waits on it).
        n = self.max_seq_len + 1
        self.tokens = torch.zeros(n, dtype=torch.int32, device=dev)
        self.stop_ids = torch.zeros(MAX_STOP_IDS, dtype=torch.int32, device=dev)
        kinds = [KINDS[t.variants[int(k)].kind] for k in t.records[:, F_KIND]]
        (sample_task,) = [i for i, k in enumerate(kinds) if k.ends_step]
        self._sample_counter = int(t.records[sample_task, F_SIGNAL])
        self._sample_producers = int((t.records[:, F_SIGNAL] == self._sample_counter).sum())
        # Sampled tokens reach the host through mapped pinned memory as they are drawn.
        self._host_ptr = checked(
            driver.cuMemHostAlloc(4 * n, driver.CU_MEMHOSTALLOC_DEVICEMAP), "pinning host memory"
        )
        self._host_dev = int(
            checked(driver.cuMemHostGetDevicePointer(self._host_ptr, 0), "mapping host memory")
        )
        self._host_tokens = np.ctypeslib.as_array(
            (ctypes.c_int32 * n).from_address(int(self._host_ptr))
        )
        p = self._decode.params  # the buffers' addresses are set: add the multi-step ones
        p.tokens, p.stop_ids = self.tokens.data_ptr(), self.stop_ids.data_ptr()
        p.sample_counter, p.sample_producers = self._sample_counter, self._sample_producers
        self._tiles = None  # the prefill program (runtime/prefill.py), when built
        if self.art.tiles is not None:
            spec, cubin = self.art.tiles
            self._tiles = GpuPrefill(m, spec, cubin, self.w, self.act)

    @property
    def prefill_chunk(self) -> int:
        """Prompt tokens per prefill chunk (1: no prefill program, prompts run as decode
        steps)."""
        return self._tiles.chunk if self._tiles is not None else 1

    def prefill(self, tokens: Sequence[int], pos: int = 0) -> None:
        """Write the KV cache rows of `tokens` at pos, pos + 1, ... (their logits are not
        computed): the prefill program, `prefill_chunk` tokens per chunk, or one decode step
        per token when the artifact has none. Synchronises; raises KernelError on a fault."""
        toks = [int(t) for t in tokens]
        check_prompt(len(toks), pos, self.max_seq_len)  # empty, or past the cache: refused
        for i, tok in enumerate(toks):
            self._check_step(tok, pos + i)
        if self._tiles is not None:
            self._tiles.run(toks, pos)
            self.check("prefill")
        else:
            for i, tok in enumerate(toks):
                self.launch(tok, pos + i)
            self.check()

    # ------------------------------------------------------------ stepping
    def launch(self, token: int, pos: int) -> None:
        """Enqueue one decode step (logits only) on the current stream; no synchronisation."""
        self._check_step(token, pos)
        self._launch(token, pos, 1, 1, MODE_LOGITS, GREEDY, 0, None)
        self.epoch += 1

    def _check_step(self, token: int, pos: int) -> None:
        if not 0 <= pos < self.max_seq_len:
            raise ValueError(f"pos {pos} is outside the KV cache (max_seq_len {self.max_seq_len})")
        if not 0 <= token < self.vocab:
            raise ValueError(f"token {token} is outside the vocabulary (0..{self.vocab - 1})")

    def _launch(self, token, pos, n_steps, n_forced, mode, rules, n_stop, host) -> None:
        """One cooperative launch of n_steps steps; epochs from self.epoch + 1 (the caller
        adds the steps that ran)."""
        self.epoch = self._decode.room_for(self.epoch, n_steps, self.device)
        p = self._decode.params  # the buffers' addresses were set once, in __init__
        p.token, p.pos, p.epoch = int(token), int(pos), self.epoch + 1
        p.timeout_ns = self.timeout_ns
        p.host_tokens = host
        p.n_steps, p.n_forced, p.n_stop, p.mode = n_steps, n_forced, n_stop, mode
        p.temperature, p.top_p, p.top_k, p.seed = (
            rules.temperature,
            rules.top_p,
            rules.top_k,
            rules.seed,
        )
        self._decode.launch(self.device, "launching the persistent kernel")

    def run(
        self,
        tokens: Sequence[int],
        pos: int,
        n_steps: int,
        sampling: Sampling,
        stop_ids: Sequence[int] = (),
        on_token: Callable[[int], None] | None = None,
    ) -> list[int]:
        """One launch of up to n_steps decode steps from cache position pos: step i feeds
        tokens[i] while they last (the prompt), then the token step i - 1's sample task
        drew, on the GPU. Each drawn token reaches `on_token` as soon as the kernel writes
        it (mapped host memory). Returns the drawn tokens, ending at a stop id or after
        n_steps steps (the same contract as Interpreter.run)."""
        given = [int(t) for t in tokens]
        if not 1 <= len(given) <= n_steps:
            raise ValueError(f"{len(given)} given tokens for {n_steps} steps")
        for i, tok in enumerate(given):
            self._check_step(tok, pos + i)
        self._check_step(given[0], pos + n_steps - 1)
        stops = [int(t) for t in stop_ids]
        if len(stops) > MAX_STOP_IDS:
            raise GenerationError(f"at most {MAX_STOP_IDS} stop ids (got {len(stops)})")
        if stops:
            self.stop_ids[: len(stops)].copy_(torch.tensor(stops, dtype=torch.int32))
        self.tokens[: len(given)].copy_(torch.tensor(given, dtype=torch.int32))
        n_out = n_steps - len(given) + 1
        host = self._host_tokens
        host[:n_out] = -1
        mode = MODE_GREEDY if sampling.greedy else MODE_SAMPLED
        self._launch(given[0], pos, n_steps, len(given), mode, sampling, len(stops), self._host_dev)
        done = torch.cuda.Event()
        done.record()
        out: list[int] = []
        while len(out) < n_out:
            tok = int(host[len(out)])
            if tok >= 0:
                out.append(tok)
                if on_token is not None:
                    try:
                        on_token(tok)
                    except BaseException:  # the caller gave up (a client left, a stop string)
                        self._halt()
                        raise
                if tok in stops:
                    break
            elif done.query():
                if int(host[len(out)]) < 0:  # nothing more was written (an error)
                    break
            else:
                time.sleep(20e-6)
        self.epoch += len(given) - 1 + len(out)  # the steps that ran
        self.check()
        if len(out) < n_out and not (out and out[-1] in stops):
            raise KernelError(f"the kernel stopped after {len(out)} of {n_out} tokens")
        return out

    def _halt(self) -> None:
        """Stop the launch in flight and forget the sequence: the host sets the error word, as
        a CTA that gave up would (a copy on a side stream, beside the kernel's), so every CTA
        stops at its next look at it, within a step; then reset() waits for the kernel."""
        side = torch.cuda.Stream(self.device)
        with torch.cuda.stream(side):
            self.error[:1].copy_(self._halt_word, non_blocking=True)
        self.reset()

    def check(self, where: str = "") -> None:
        """Synchronise and raise KernelError if the kernel reported one (`where`: which
        launch, for the message; default the decode step)."""
        torch.cuda.synchronize(self.device)
        e = self.error.tolist()
        if e[0]:
            self.error.zero_()
            raise KernelError(describe_error(e, where or f"step {self.epoch}"))

    def step(self, token: int, pos: int) -> torch.Tensor:
        """One decode step; returns a copy of the float32 logits [vocab] on the GPU."""
        self.launch(token, pos)
        self.check()
        return self.logits.clone()

    def reset(self) -> None:
        """Forget the cache and restart the counters (after an error, or a new sequence)."""
        torch.cuda.synchronize(self.device)
        self.counters.zero_()
        self.error.zero_()
        self.act.fill_(float("nan"))
        self.epoch = 0

    def timeline(self):
        """After a profiled step: int64 [n_tasks, PROFILE_WORDS] per task (global-timer ns at
        wait start, run start and end; ns spent waiting for weights in the ring; when its
        inputs were loaded, or 0; when its own work was done, or 0; ns thread 0 spent on its
        ring chunks after their waits), and each task's SM."""
        if not self.profiled:
            raise RuntimeError("compiled without profile=True (tilert-compile --profile)")
        torch.cuda.synchronize(self.device)
        t, buf = self.art.table, self.profile
        sm_of = [0] * len(t.records)
        for s in range(len(t.sm_start) - 1):
            for i in range(int(t.sm_start[s]), int(t.sm_start[s + 1])):
                sm_of[int(t.sm_tasks[i])] = s
        return buf.cpu().numpy(), sm_of

    def generate(self, prompt_ids, max_new_tokens: int, **kw) -> list[int]:
        """Greedy or sampled generation from a fresh cache (runtime.generate.generate_on's
        keywords): by default prompt and new tokens in one launch, sampled on the GPU;
        per_token=True launches once per token and samples on the host."""
        stops = kw.get("stop_ids") or ()
        if not kw.get("per_token") and len(stops) > MAX_STOP_IDS:  # before any launch
            raise GenerationError(f"at most {MAX_STOP_IDS} stop ids (got {len(stops)})")
        return generate_on(self, prompt_ids, max_new_tokens, **kw)

    def __del__(self):
        ptr = getattr(self, "_host_ptr", None)
        if ptr is None:
            return
        try:  # the kernel may still write the mapped tokens: let it finish first
            from cuda.bindings import driver

            torch.cuda.synchronize(self.device)
            driver.cuMemFreeHost(ptr)
        except Exception:  # interpreter shutdown: the context may be gone already
            pass
