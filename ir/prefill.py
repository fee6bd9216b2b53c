"""The prefill program: a prompt chunk as a fixed sequence of tile-program launches.

Decode is one persistent kernel; a prompt is compute, not bytes, so it runs as GEMMs on
tensor cores. One chunk of up to `chunk` tokens at cache positions pos .. pos + n - 1 is
a list of launches, the same list for every chunk (pos and n are read by the kernels from
a small device buffer, `meta`), so the runtime can replay it as it is:

    embed, add_norm                          x = embed[tokens]; xn = norm(x)
    per layer:  gemm qkv -> qk_cache         q (normed, rotated), k and v rows into the cache
                attention -> gemm o          (the last layer stops after its cache rows)
                add_norm -> gemm_silu -> gemm down -> add_norm (next layer's input norm)

A `Kernel` is a tile program specialised on static shapes; a `Launch` binds its tensor
arguments to places: a scratch buffer of the program, a weight or cache tensor of the
decode layout, or the runtime's `meta`, `tokens` and `inv_freq` buffers. Scratch
buffers hold `chunk` rows; nothing grows with max_seq_len.
"""

from __future__ import annotations

from dataclasses import dataclass

# What each kernel kind computes, rows r < n of the chunk (the reference in
# runtime/prefill.py is the executable definition):
KINDS = {
    "embed": "x[r] = float(embed[tokens[r]])",
    "add_norm": "x[r] += y[r] (when bound); out[r] = bf16(x[r] / rms(x[r]) * w)",
    "gemm": "c = a @ b.T, float32 accumulation (a, b bf16)",
    "gemm_silu": "out = bf16(silu(a @ b[:F].T) * (a @ b[F:].T))",
    "qk_cache": "head norm (qwen3), RoPE at pos + r; q -> bf16; k, v -> cache rows pos + r",
    "attention": "causal GQA softmax(q k^T / sqrt(hd)) v over cache rows 0 .. pos + r",
}

# The runtime's own buffers a launch can bind.
RUNTIME_BUFFERS = ("meta", "tokens", "inv_freq")


@dataclass(frozen=True)
class Buffer:
    """A scratch tensor of the program: `chunk` rows, row-major."""

    name: str
    dtype: str  # "bf16" | "f32"
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class Kernel:
    """A tile program: kind plus the static shapes it is specialised on."""

    name: str
    kind: str
    statics: tuple[tuple[str, int | float], ...]
    # The tile (rows of the chunk a block takes) along the grid's row axis: a launch runs
    # ceil(n / row_tile) blocks on that axis, so a short chunk costs its own rows only.
    row_tile: int

    def get(self, key: str):
        return dict(self.statics)[key]


@dataclass(frozen=True)
class Launch:
    kernel: str
    layer: int
    # parameter -> place: "buf:<name>", "w:<weight tensor>", "act:<cache tensor>",
    # "rt:<meta|tokens|inv_freq>", or "none" (an optional argument left out)
    args: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class PrefillProgram:
    chunk: int  # tokens per launch sequence, at most
    buffers: tuple[Buffer, ...]
    kernels: tuple[Kernel, ...]
    launches: tuple[Launch, ...]
    consts: tuple[tuple[str, int | float | bool], ...]

    def kernel(self, name: str) -> Kernel:
        for k in self.kernels:
            if k.name == name:
                return k
        raise KeyError(name)

    def const(self, key: str):
        return dict(self.consts)[key]


def format_prefill(p: PrefillProgram) -> str:
    """The program as text: buffers, kernels with their statics, then the launches."""
    out = [f"prefill chunk={p.chunk} " + " ".join(f"{k}={v}" for k, v in p.consts)]
    for b in p.buffers:
        out.append(f"buffer {b.name}: {b.dtype}[{', '.join(map(str, b.shape))}]")
    for k in p.kernels:
        st = " ".join(f"{a}={v}" for a, v in k.statics)
        out.append(f"kernel {k.name} = {k.kind}(row_tile={k.row_tile} {st})")
    for la in p.launches:
        args = ", ".join(f"{a}={v}" for a, v in la.args)
        out.append(f"  L{la.layer} {la.kernel}({args})")
    return "\n".join(out) + "\n"
