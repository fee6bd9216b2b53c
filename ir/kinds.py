"""Task kinds: one record each, the one place a kind's contract is written down.

A task kind is code specialised on static shapes (a `Variant` of the task table) and fed
one task-table record of int64 arguments. Its record says what the other layers read:

- `args`: the argument names, in order from the record's F_ARG0 (ir/tasktable.py ARGS;
  the kernel's `<Kind>Args` struct). w_* are weights-arena offsets, counts are counts,
  the rest act-arena offsets.
- `statics`: the variant's static shapes, in order (the device function's template
  parameters; codegen/serialize.py computes their values). A GEMV's last, QBK, is its
  weights' FP8 scale k-block (ir/precision.py); bf16 variants leave it out (the
  template's default 0).
- `polls`: with flags, the kind reads its activation inputs until they carry the step's
  parity and writes its outputs with it (passes.deps then gives it no counter waits).
- `streams`: a GEMV, whose weight rows are its stream entries (the ring's producer copies
  them in order).
- `colour`: its colour in the compiler's pictures.
- `device` / `header`: its device function and the header that defines it
  (codegen/cuda/tasks/); `interpreter`: the runtime.interpreter.Interpreter method.

A new kind: a record here, codegen/cuda/tasks/<kind>.cuh, Interpreter._<kind>; and the
passes that make such tasks (passes.fuse, passes.tile) and their serialisation
(codegen/serialize.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskKind:
    name: str
    args: tuple[str, ...]
    statics: tuple[str, ...]
    colour: str
    polls: bool = False
    streams: bool = False

    @property
    def device(self) -> str:
        return f"task_{self.name}"

    @property
    def header(self) -> str:
        return f"tasks/{self.name}.cuh"

    @property
    def interpreter(self) -> str:
        return f"_{self.name}"


KINDS: dict[str, TaskKind] = {
    k.name: k
    for k in (
        # out = table[token] (row0.. of the hidden vector)
        TaskKind("embed", ("w_table", "out", "rows"), ("D",), "#7f7f7f"),
        # one split of one kv group: [q/k head norm] -> RoPE -> cache write -> attention over
        # the split's cache rows -> partials; the group's last split combines them. head,
        # split: indices; arrive: the counter its splits count arrivals on (without flags)
        TaskKind(
            "attention_decode",
            (
                "qkv",
                "w_q_gamma",
                "w_k_gamma",
                "k_cache",
                "v_cache",
                "part",
                "out",
                "head",
                "split",
                "arrive",
            ),
            ("HD", "G", "H", "KV", "S", "NSPLIT", "QKN"),
            "#d62728",
            polls=True,
        ),
        # out = residual + W @ x   (o-proj, down-proj)
        TaskKind(
            "linear_residual",
            ("x", "w", "residual", "out", "rows"),
            ("K", "R", "QBK"),
            "#2ca02c",
            polls=True,
            streams=True,
        ),
        # out = silu(gate @ xn) * (up @ xn), xn = rmsnorm(x)
        TaskKind(
            "gate_up_silu",
            ("x", "w_gamma", "w_gate", "w_up", "out", "rows"),
            ("K", "R", "QBK"),
            "#ff7f0e",
            polls=True,
            streams=True,
        ),
        # out = W @ rmsnorm(x) (stacked QKV, LM head); argmax_out: the LM head's (max,
        # index) partial slot (NO_OFFSET elsewhere); row0: its first row (the index base)
        TaskKind(
            "norm_linear",
            ("x", "w_gamma", "w", "out", "rows", "argmax_out", "row0"),
            ("K", "R", "ARGMAX", "QBK"),
            "#1f77b4",
            polls=True,
            streams=True,
        ),
        # the next token from the logits (runtime.sampling's rules)
        TaskKind("sample", ("logits", "out", "vocab", "parts", "n_parts"), ("V",), "#9467bd"),
    )
}
