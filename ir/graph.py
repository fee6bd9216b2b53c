"""Graph level: one decode step as ops on whole tensors.

A `Graph` is what a model family lowers to before anything is cut into tiles: the
embedding lookup, every layer's norms, projections, RoPE, cache write, attention, MLP and
residual adds, the final norm and the LM head. Fusion rewrites this level into fused ops,
whose kind is the name of the task kind that runs them (ir/kinds.py): each task kind's
record says which op chains it fuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from tilert_compiler.ir.precision import format_block, fp8_row_bytes


class Storage(str, Enum):
    WEIGHT = "weight"  # streamed from HBM once per step, bf16 or FP8 (TensorDecl.fp8_block)
    ACT = "act"  # per-step activation, f32, written once per step
    CACHE = "cache"  # KV cache, f32, one row written per step at `pos`
    OUT = "out"  # logits, f32


class OpKind(str, Enum):
    """The primitive ops a model family emits. A fused op's kind is a task kind's name
    (EMBED and SAMPLE are task kinds as they stand)."""

    EMBED = "embed"  # out[hidden] = table[token]
    RMSNORM = "rmsnorm"  # out = x * rsqrt(mean(x^2) + eps) * gamma
    HEAD_RMSNORM = "head_rmsnorm"  # the same, per head of `head_dim` (qwen3 q/k norm)
    LINEAR = "linear"  # out[N] = W[N, K] @ x[K]
    ROPE = "rope"  # rotate-half rotary embedding at position `pos`
    KV_WRITE = "kv_write"  # cache[head, pos, :] = k or v
    ATTENTION = "attention"  # softmax(q k^T / sqrt(d)) v over cache rows [0, pos]
    SILU_MUL = "silu_mul"  # out = silu(gate) * up
    ADD = "add"  # out = a + b
    SAMPLE = "sample"  # token = a draw from logits (runtime.sampling's rules)

    def __str__(self) -> str:  # the name, as a fused op's (task kind's) kind prints
        return self.value


@dataclass(frozen=True)
class TensorDecl:
    name: str
    shape: tuple[int, ...]
    storage: Storage
    layer: int = -1  # -1: not per layer
    # FP8 e4m3 weight with one scale per (bn, bk) block (ir/precision.py); None: bf16
    fp8_block: tuple[int, int] | None = None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def row_units(self) -> int:
        """2-byte arena units of one row (last dimension): bf16 values, or an FP8 row."""
        if self.fp8_block is None:
            return self.shape[-1]
        return fp8_row_bytes(self.shape[-1], self.fp8_block[1]) // 2

    @property
    def arena_units(self) -> int:
        """2-byte units the tensor takes in the weights arena (elements elsewhere)."""
        return self.numel // self.shape[-1] * self.row_units if self.fp8_block else self.numel

    def precision(self) -> str:
        """The text form's precision suffix: empty for bf16 (and every activation)."""
        return f" {format_block(self.fp8_block)}" if self.fp8_block else ""


@dataclass(frozen=True)
class Op:
    name: str  # unique, e.g. "L3.q_proj"
    kind: OpKind | str  # a primitive op, or a fused op's task kind (ir/kinds.py)
    inputs: tuple[str, ...]  # tensor names, activations and weights
    outputs: tuple[str, ...]
    layer: int = -1
    attrs: tuple[tuple[str, object], ...] = ()  # sorted (key, value) pairs: hashable, printable
    fused: tuple[str, ...] = ()  # names of the primitive ops a fused op replaced

    def attr(self, key: str, default: object = None) -> object:
        return dict(self.attrs).get(key, default)


def attrs(**kw: object) -> tuple[tuple[str, object], ...]:
    return tuple(sorted(kw.items()))


@dataclass(frozen=True)
class Graph:
    """One decode step. `tensors` declares every buffer; `ops` is in topological order."""

    model: str
    tensors: tuple[TensorDecl, ...]
    ops: tuple[Op, ...]
    consts: tuple[tuple[str, object], ...] = field(default=())  # model scalars (eps, dims)

    def tensor(self, name: str) -> TensorDecl:
        return self._by_name()[name]

    def const(self, key: str) -> object:
        return dict(self.consts)[key]

    def _by_name(self) -> dict[str, TensorDecl]:
        return {t.name: t for t in self.tensors}


class Uses:
    """The ops consuming each tensor of a list of ops, and the tensors' declarations
    (what fusion patterns match on)."""

    def __init__(self, ops: list[Op], tensors: tuple[TensorDecl, ...]):
        self.tensor = {t.name: t for t in tensors}
        self.consumers: dict[str, list[Op]] = {}
        for op in ops:
            for t in op.inputs:
                self.consumers.setdefault(t, []).append(op)

    def only_consumer(self, tensor: str) -> Op | None:
        cs = self.consumers.get(tensor, [])
        return cs[0] if len(cs) == 1 else None


def format_graph(g: Graph) -> str:
    """Stable text form: one line per tensor, then one line per op."""
    lines = [f"graph {g.model}"]
    for k, v in g.consts:
        lines.append(f"  const {k} = {v!r}")
    for t in g.tensors:
        shape = "x".join(str(d) for d in t.shape)
        lines.append(f"  tensor {t.name} [{shape}] {t.storage.value}{t.precision()}")
    for op in g.ops:
        a = " ".join(f"{k}={v!r}" for k, v in op.attrs)
        fz = f" fused=({','.join(op.fused)})" if op.fused else ""
        lines.append(
            f"  {op.name} = {op.kind}({', '.join(op.inputs)}) -> ({', '.join(op.outputs)})"
            + (f" {a}" if a else "")
            + fz
        )
    return "\n".join(lines) + "\n"
