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
buffers hold a row per token of the chunk; nothing grows with max_seq_len.
"""

from __future__ import annotations

from dataclasses import dataclass

# What each kernel kind computes for token r < n of the chunk (the reference in
# runtime/prefill.py is the executable definition):
KINDS = {
    "embed": "x[r] = float(embed[tokens[r]])",
    "add_norm": "x[r] += y[r] (when bound); out[r] = bf16(x[r] / rms(x[r]) * w)",
    "gemm": "c = a @ b.T, float32 accumulation (a bf16; b bf16, or FP8 rows: statics QBK, RB)",
    "gemm_silu": "out = bf16(silu(a @ b[:F].T) * (a @ b[F:].T))",
    "qk_cache": "head norm (qwen3), RoPE at pos + r; q -> bf16; k, v -> cache rows pos + r",
    "attention": "causal GQA softmax(q k^T / sqrt(hd)) v over cache rows 0 .. pos + r",
}

# The runtime's own buffers a launch can bind.
RUNTIME_BUFFERS = ("meta", "tokens", "inv_freq")


@dataclass(frozen=True)
class Buffer:
    """A scratch tensor of the program: a row per token of the chunk, row-major."""

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
    # The tile (tokens of the chunk a block takes) along the grid's row axis: a launch runs
    # ceil(n / row_tile) blocks on that axis, so a short chunk costs its own tokens only.
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


class PrefillParseError(ValueError):
    pass


def _value(text: str) -> int | float | bool:
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        return float(text)


def _pairs(text: str, sep: str) -> tuple[tuple[str, str], ...]:
    out = []
    for item in filter(None, (t.strip() for t in text.split(sep))):
        key, eq, val = item.partition("=")
        if not eq:
            raise PrefillParseError(f"expected key=value, got '{item}'")
        out.append((key, val))
    return tuple(out)


def parse_prefill(text: str) -> PrefillProgram:
    """The inverse of format_prefill: parse_prefill(format_prefill(p)) == p."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines or not lines[0].startswith("prefill "):
        raise PrefillParseError("a prefill program starts with 'prefill chunk=N ...'")
    head = dict(_pairs(lines[0].removeprefix("prefill "), " "))
    chunk = int(head.pop("chunk"))
    consts = tuple((k, _value(v)) for k, v in head.items())
    buffers, kernels, launches = [], [], []
    for n, ln in enumerate(lines[1:], start=2):
        try:
            if ln.startswith("buffer "):
                name, _, rest = ln.removeprefix("buffer ").partition(": ")
                dtype, _, dims = rest.partition("[")
                shape = tuple(int(d) for d in dims.rstrip("]").split(","))
                buffers.append(Buffer(name, dtype, shape))
            elif ln.startswith("kernel "):
                name, _, rest = ln.removeprefix("kernel ").partition(" = ")
                kind, _, args = rest.partition("(")
                pairs = dict(_pairs(args.rstrip(")"), " "))
                row_tile = int(pairs.pop("row_tile"))
                statics = tuple((k, _value(v)) for k, v in pairs.items())
                kernels.append(Kernel(name, kind, statics, row_tile))
            elif ln.startswith("  L"):
                layer, _, rest = ln.strip().removeprefix("L").partition(" ")
                kernel, _, args = rest.partition("(")
                launches.append(Launch(kernel, int(layer), _pairs(args.rstrip(")"), ",")))
            else:
                raise PrefillParseError(f"unknown line '{ln[:60]}'")
        except (ValueError, KeyError) as e:
            raise PrefillParseError(f"line {n}: {e}") from None
    return PrefillProgram(chunk, tuple(buffers), tuple(kernels), tuple(launches), consts)
