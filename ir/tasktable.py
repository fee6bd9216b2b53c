"""The schedule level in binary form: the task table the kernel and the interpreter read.

Tasks are data, task kinds are code. Every task is one record of `RECORD` int64 fields;
`kind` indexes the artifact's variant list (a task kind specialised on static shapes).
The per-kind argument slots are named by each kind's record (ir/kinds.py `args`):

  record: kind layer n_waits wait_at signal n_stream stream_at a0..a10
  waits:    int64 pairs (counter, producers per step)
  stream:   int64 triples (weight element offset, elements, row length): the task's weight
            rows in the order its GEMV consumes them (the ring producer copies these)
  sm_start: int32[sms + 1], sm_tasks: int32[...]: SM s runs sm_tasks[sm_start[s]:sm_start[s+1]]

Offsets in args are element offsets into the `weights` (bf16) or `act` (f32) arena.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tilert_compiler.ir.kinds import KINDS

# A record's fixed fields, in order (the kernel's F_* constants are rendered from these
# names), then the kind's arguments from F_ARG0 on.
RECORD_FIELDS = ("KIND", "LAYER", "NWAIT", "WAIT", "SIGNAL", "NSTREAM", "STREAM")
F_KIND, F_LAYER, F_NWAIT, F_WAIT, F_SIGNAL, F_NSTREAM, F_STREAM = range(len(RECORD_FIELDS))
F_ARG0 = len(RECORD_FIELDS)
RECORD = F_ARG0 + 11
# Profiled builds: int64 words per task in the profile buffer (wait start, run start, end
# in global-timer ns; ns spent waiting for weights in the ring; when the inputs were
# loaded, or 0 for kinds without an input phase; when the task's own work was done: a
# GEMV's rows dotted, an attention split's partials written; or 0; ns thread 0 spent on
# the task's ring chunks, from each chunk's wait to its release).
PROFILE_WORDS = 7
# The kernel's error codes (word 0 of the error words `report` writes; the runtime's
# describe_error names them): a counter wait, a task kind not in the variant list, a
# weight-ring wait, a polled input that never got the step's parity.
ERR_TIMEOUT, ERR_BAD_KIND, ERR_STREAM_TIMEOUT, ERR_INPUT_TIMEOUT = 1, 2, 3, 4
# With ERR_STREAM_TIMEOUT, word 5 says which weight-ring wait: a stage's weights (the
# consumers), the producer's earlier copy landed, a free stage (the producer).
RING_WAIT_STAGE, RING_WAIT_COPY, RING_WAIT_FREE = 0, 1, 2
# Params.mode: what the sample task does (runtime.sampling has the rules).
MODE_LOGITS, MODE_GREEDY, MODE_SAMPLED = 0, 1, 2


@dataclass(frozen=True)
class Param:
    """A field of the kernel's parameter struct. `type`: i32, u32, f32 or u64, or a pointer
    to one of those, i64 or bf16 ("const i64*": read only)."""

    name: str
    type: str
    doc: str = ""


# The kernel's parameters, in order: codegen renders them as the kernel's `struct Params`,
# the runtime's ctypes mirror (runtime.gpu) is built from them; both align each field to
# its size (4 bytes of padding after epoch and after sample_producers). The order is the
# one the kernel was tuned with: another order (no padding) moved ptxas's register
# allocation on qwen3-8b (248 -> 252 registers, 38 more predicate saves).
PARAMS = (
    Param("tasks", "const i64*", "[n_tasks][RECORD]: the task records"),
    Param("waits", "const i64*", "[n][2]: counter, producers per step"),
    Param("stream", "const i64*", "[s][3]: weight element offset, elements, row length"),
    Param("sm_start", "const i32*", "[sms + 1]"),
    Param("sm_tasks", "const i32*", "task ids per SM, in global order"),
    Param("w", "const bf16*", "weights arena"),
    Param("act", "f32*", "activations, KV cache, logits"),
    Param("counters", "u32*", "monotonic: each producer adds 1 per step"),
    Param("error", "i32*", "[8]: code, sm, task, counter, value, expected"),
    Param("token", "i32", "the token step 0 feeds"),
    Param("pos", "i32", "step 0's cache position"),
    Param("epoch", "u32", "steps run on these counters, step 0 included (>= 1)"),
    Param("timeout_ns", "u64", "bound on every wait"),
    Param(
        "profile",
        "u64*",
        f"[n_tasks][{PROFILE_WORDS}] global-timer ns (profiled builds): wait start, run start, "
        "end; ns thread 0 spent waiting for weight chunks to land in the ring; when the "
        "task's inputs were loaded (GEMV: x, normed; attention: q/k/v and the cache rows), "
        "or 0; when its own work was done, or 0; ns spent on its chunks",
    ),
    # Multi-step launches: step i feeds token i (step 0: `token`, later ones tokens[i]) at
    # cache position pos + i, up to n_steps or a stop id; the sample task of step i writes
    # the next token to tokens[i + 1] and to host_tokens[i + 1 - n_forced].
    Param("tokens", "i32*", "[n_steps + 1]; [1, n_forced) hold the prompt's tokens"),
    Param("host_tokens", "i32*", "[n_steps + 1 - n_forced], mapped host memory, or null"),
    Param("stop_ids", "const i32*", "[n_stop]"),
    Param("n_steps", "i32"),
    Param("n_forced", "i32", "steps whose next token is given (the prompt), not sampled"),
    Param("n_stop", "i32"),
    Param("mode", "i32", "MODE_LOGITS, MODE_GREEDY or MODE_SAMPLED"),
    Param("temperature", "f32"),
    Param("top_p", "f32"),
    Param("top_k", "i32"),
    Param("sample_counter", "i32", "the sample task's signal counter (the step gate waits on it)"),
    Param("sample_producers", "u32", "its producers per step"),
    Param("seed", "u64", "the sample task's draws: uniform(seed, pos)"),
)

assert all(len(k.args) <= RECORD - F_ARG0 for k in KINDS.values())


@dataclass(frozen=True)
class Variant:
    """A task kind specialised on the static shapes its code is compiled for."""

    kind: str
    static: tuple[tuple[str, int], ...]  # e.g. (("K", 2048),)

    def get(self, key: str) -> int:
        return dict(self.static)[key]

    @property
    def label(self) -> str:
        return self.kind + "".join(f"_{k}{v}" for k, v in self.static)


@dataclass
class TaskTable:
    records: np.ndarray  # int64 [n_tasks, RECORD]
    waits: np.ndarray  # int64 [n, 2]
    stream: np.ndarray  # int64 [s, 3]
    sm_start: np.ndarray  # int32 [sms + 1]
    sm_tasks: np.ndarray  # int32 [n_tasks]
    variants: list[Variant]

    def args(self, i: int) -> dict[str, int]:
        v = self.variants[int(self.records[i, F_KIND])]
        names = KINDS[v.kind].args
        return {n: int(self.records[i, F_ARG0 + j]) for j, n in enumerate(names)}

    def waits_of(self, i: int) -> list[tuple[int, int]]:
        at, n = int(self.records[i, F_WAIT]), int(self.records[i, F_NWAIT])
        return [(int(c), int(e)) for c, e in self.waits[at : at + n]]

    def save(self, path) -> None:
        np.savez(
            path,
            records=self.records,
            waits=self.waits,
            stream=self.stream,
            sm_start=self.sm_start,
            sm_tasks=self.sm_tasks,
        )

    @classmethod
    def load(cls, path, variants: list[Variant]) -> TaskTable:
        with np.load(path) as z:
            return cls(
                z["records"],
                z["waits"],
                z["stream"],
                z["sm_start"],
                z["sm_tasks"],
                variants,
            )
