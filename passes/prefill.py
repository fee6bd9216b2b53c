"""prefill: model config + decode layout -> PrefillProgram (ir/prefill.py).

Picks the chunk (tokens per launch sequence) and each GEMM's tile, and binds every launch
to the decode program's weights and KV cache. The fused weights ([Wq; Wk; Wv] and
[Wgate; Wup]) are read as one matrix each, so they must lie back to back in the decode
layout (the layout pass places a task's weights in first-use order); that is checked here.
"""

from __future__ import annotations

from tilert_compiler.ir.precision import kernel_block
from tilert_compiler.ir.prefill import Buffer, Kernel, Launch, PrefillProgram
from tilert_compiler.ir.tile import Schedule

ROW_TILE = 128  # chunk rows a GEMM block takes; the chunk is a multiple of it
ATTN_ROWS = 128  # query rows an attention block takes: tokens x q heads of one kv head
DEFAULT_CHUNK = 1024  # tokens per chunk when the cache allows it
GEMM_BK = 64  # the reduction columns a GEMM tile takes a step (tile_programs.gemm's block_k)


class PrefillPlanError(ValueError):
    """The model's shapes do not fit the prefill program's tiles; the message ends with
    the way out (compile without it)."""

    def __init__(self, msg: str):
        super().__init__(f"{msg}; compile with --prefill-chunk 0 to run prompts as decode steps")


def prefill_chunk(max_seq_len: int, most: int | None = None) -> int:
    """Tokens per chunk: `most` (or DEFAULT_CHUNK), at most max_seq_len, in whole row tiles."""
    want = DEFAULT_CHUNK if most is None else most
    want = min(want, max_seq_len)
    return max(ROW_TILE, -(-want // ROW_TILE) * ROW_TILE)


# Work per unit time of a 128-row block by its width, against 256 wide, on H100 (bench/
# NOTES.md, run P3: 128 wide 584-635 against 665-736 TFLOP/s at 4096 rows; 64 wide ~0.6
# at 512 rows; 32 a guess)
TILE_EFFICIENCY = {256: 1.0, 128: 0.87, 64: 0.6, 32: 0.4}


def gemm_tile(m: int, n: int, sms: int) -> int:
    """Columns a GEMM block takes (128 rows): the width, of 256, 128, 64 and 32 dividing
    n, with the least predicted time for a full chunk of m rows, counting whole waves of
    blocks over the SMs (a 128 x 256 block is the most efficient; a narrower one gives
    more blocks to a short, narrow GEMM)."""
    fits = [b for b in (256, 128, 64, 32) if n % b == 0]
    if not fits:
        raise PrefillPlanError(
            f"the prefill program's tiles need GEMM widths that are multiples of 32 (got {n})"
        )

    def cost(b: int) -> float:
        blocks = -(-m // ROW_TILE) * (n // b)
        return -(-blocks // sms) * b / TILE_EFFICIENCY[b]

    return min(fits, key=cost)


def gemm_kernel(
    name: str, kind: str, m: int, n: int, k: int, sms: int, fp8: tuple[int, int] | None = None
) -> Kernel:
    """A GEMM's kernel: its tile (gemm_tile; gate/up's two accumulators at most 128 wide),
    pipeline stages (four for 128-wide blocks, three for 256: the shared memory of four
    would not leave room) and an L2 swizzle of 8 row blocks (blocks that share B run
    together; gate/up 1.9x faster with it at 4096 rows, run P3). `fp8`: the weight is
    FP8 rows, (QBK, RB): its scales' k-block and row bytes (ir/precision.py), statics of
    the kernel (tile_programs.gemm_fp8); the tiles and stages are the bf16 GEMM's."""
    bn = gemm_tile(m, n, sms)
    if kind == "gemm_silu":
        bn = min(bn, 128)
    stages = 3 if bn == 256 else 4
    if kind == "gemm_silu":
        stages = 3  # three [128 x 64] tiles a stage
    st = (("M", m), ("N", n), ("K", k), ("block_n", bn), ("stages", stages), ("swizzle", 8))
    if fp8 is not None:
        st += (("QBK", fp8[0]), ("RB", fp8[1]))
    return Kernel(name, kind, st, ROW_TILE)


def weight_formats(
    decode: Schedule, layers: int, group: tuple[str, ...]
) -> list[tuple[int, int] | None]:
    """How a GEMM's weight (the `group` of projections it reads as one matrix) is stored,
    layer by layer: None for bf16, else (QBK, RB) of its FP8 rows. The projections of one
    layer's group must agree (one matrix); an FP8 tile takes GEMM_BK columns a step, so
    its k-blocks must hold whole steps. Layers may differ (an ignore list that keeps a
    whole module bf16): each format gets its own kernel."""
    decls = {t.name: t for t in decode.program.tensors}
    out: list[tuple[int, int] | None] = []
    for i in range(layers):
        names = [f"model.layers.{i}.{g}.weight" for g in group]
        forms = {(decls[n].fp8_block, decls[n].row_units) for n in names}
        if len(forms) > 1:
            raise PrefillPlanError(
                f"prefill: layer {i}'s {', '.join(group)} mix bf16 and FP8 or FP8 scale "
                "blocks; one GEMM reads them as one matrix"
            )
        ((block, row_units),) = forms
        if block is None:
            out.append(None)
            continue
        k = decls[names[0]].shape[-1]
        qbk = kernel_block(k, block[1])
        if qbk < k and qbk % GEMM_BK:
            raise PrefillPlanError(
                f"prefill: FP8 scale blocks of {qbk} columns ({group[0]}); the prefill GEMM "
                f"needs multiples of {GEMM_BK} or one scale per row"
            )
        out.append((qbk, 2 * row_units))
    return out


def kernel_name(name: str, fp8: tuple[int, int] | None) -> str:
    """A GEMM kernel's name: an FP8 weight's kernel (gemm_fp8) is the bf16 one's + _fp8."""
    return name if fp8 is None else f"{name}_fp8"


def plan_prefill(cfg, decode: Schedule, chunk: int) -> PrefillProgram:
    hd, H, KV = cfg.head_dim, cfg.heads, cfg.kv_heads
    D, F, S, L = cfg.hidden, cfg.intermediate, cfg.max_seq_len, cfg.layers
    sms = cfg.target.sms
    C = chunk
    nqkv = (H + 2 * KV) * hd
    # q heads of one kv head an attention block takes together (each cache row it loads
    # serves them all): the whole group when it divides the block's rows
    group = H // KV
    pack = max(p for p in range(1, group + 1) if group % p == 0 and ATTN_ROWS % p == 0)
    _check_adjacent(decode, L)
    if hd % 16:  # attention's q.k products run on wgmma, 16 elements deep
        raise PrefillPlanError(
            f"the prefill program's attention needs head_dim a multiple of 16 (got {hd})"
        )
    for what, v in (("hidden", D), ("intermediate", F), ("q/k/v width", nqkv)):
        if v % 32:
            raise PrefillPlanError(
                f"the prefill program's tiles need {what} to be a multiple of 32 (got {v})"
            )

    buffers = (
        Buffer("x", "f32", (C, D)),  # the residual stream
        Buffer("xn", "bf16", (C, D)),  # a norm's output: the next GEMM's A
        Buffer("qkv", "f32", (C, nqkv)),
        Buffer("q", "bf16", (C, H, hd)),
        Buffer("att", "bf16", (C, H * hd)),
        Buffer("y", "f32", (C, D)),  # o-proj and down-proj outputs, added into x
        Buffer("mlp", "bf16", (C, F)),
    )

    # each GEMM's weight format by layer, and a kernel per format (bf16 builds: one each)
    fmt = {
        "gemm_qkv": weight_formats(
            decode, L, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
        ),
        "gemm_o": weight_formats(decode, L, ("self_attn.o_proj",)),
        "gemm_silu": weight_formats(decode, L, ("mlp.gate_proj", "mlp.up_proj")),
        "gemm_down": weight_formats(decode, L, ("mlp.down_proj",)),
    }

    def gemm(name: str, kind: str, n: int, k: int) -> list[Kernel]:
        return [
            gemm_kernel(kernel_name(name, f), kind, C, n, k, sms, f)
            for f in dict.fromkeys(fmt[name])
        ]

    def at(name: str, i: int) -> str:
        return kernel_name(name, fmt[name][i])

    kernels = (
        Kernel("embed", "embed", (("M", C), ("D", D), ("V", cfg.vocab)), ROW_TILE),
        Kernel(
            "add_norm", "add_norm", (("M", C), ("D", D), ("eps", float(cfg.norm_eps))), ROW_TILE
        ),
        *gemm("gemm_qkv", "gemm", nqkv, D),
        Kernel(
            "qk_cache",
            "qk_cache",
            (
                ("M", C),
                ("H", H),
                ("KV", KV),
                ("HD", hd),
                ("S", S),
                ("QK_NORM", int(cfg.qk_norm)),
                ("eps", float(cfg.norm_eps)),
            ),
            ROW_TILE,
        ),
        Kernel(
            "attention",
            "attention",
            # 128 cache rows a step: 1.27x faster than 64 at 3072 cached rows (run P6)
            (
                ("M", C),
                ("H", H),
                ("KV", KV),
                ("HD", hd),
                ("S", S),
                ("pack", pack),
                ("block_n", 128),
            ),
            ATTN_ROWS // pack,
        ),
        *gemm("gemm_o", "gemm", D, H * hd),
        *gemm("gemm_silu", "gemm_silu", F, D),
        *gemm("gemm_down", "gemm", D, F),
    )

    def lw(i: int, name: str) -> str:
        return f"w:model.layers.{i}.{name}.weight"

    la: list[Launch] = [
        Launch(
            "embed",
            0,
            (
                ("tokens", "rt:tokens"),
                ("table", "w:model.embed_tokens.weight"),
                ("x", "buf:x"),
                ("meta", "rt:meta"),
            ),
        ),
        Launch(
            "add_norm",
            0,
            (
                ("x", "buf:x"),
                ("y", "none"),
                ("w", lw(0, "input_layernorm")),
                ("out", "buf:xn"),
                ("meta", "rt:meta"),
            ),
        ),
    ]
    for i in range(L):
        la.append(
            Launch(
                at("gemm_qkv", i),
                i,
                (("A", "buf:xn"), ("B", lw(i, "self_attn.q_proj")), ("C", "buf:qkv")),
            )
        )
        norms = (("qn", lw(i, "self_attn.q_norm")), ("kn", lw(i, "self_attn.k_norm")))
        if not cfg.qk_norm:
            norms = (("qn", "none"), ("kn", "none"))
        la.append(
            Launch(
                "qk_cache",
                i,
                (
                    ("qkv", "buf:qkv"),
                    *norms,
                    ("q", "buf:q"),
                    ("kc", f"act:k_cache.{i}"),
                    ("vc", f"act:v_cache.{i}"),
                    ("inv_freq", "rt:inv_freq"),
                    ("meta", "rt:meta"),
                ),
            )
        )
        if i == L - 1:
            break  # the last layer's output feeds only the LM head: the decode step's work
        la.append(
            Launch(
                "attention",
                i,
                (
                    ("Q", "buf:q"),
                    ("Kc", f"act:k_cache.{i}"),
                    ("Vc", f"act:v_cache.{i}"),
                    ("Out", "buf:att"),
                    ("meta", "rt:meta"),
                ),
            )
        )
        la.append(
            Launch(
                at("gemm_o", i),
                i,
                (("A", "buf:att"), ("B", lw(i, "self_attn.o_proj")), ("C", "buf:y")),
            )
        )
        la.append(
            Launch(
                "add_norm",
                i,
                (
                    ("x", "buf:x"),
                    ("y", "buf:y"),
                    ("w", lw(i, "post_attention_layernorm")),
                    ("out", "buf:xn"),
                    ("meta", "rt:meta"),
                ),
            )
        )
        la.append(
            Launch(
                at("gemm_silu", i),
                i,
                (("A", "buf:xn"), ("B", lw(i, "mlp.gate_proj")), ("C", "buf:mlp")),
            )
        )
        la.append(
            Launch(
                at("gemm_down", i),
                i,
                (("A", "buf:mlp"), ("B", lw(i, "mlp.down_proj")), ("C", "buf:y")),
            )
        )
        la.append(
            Launch(
                "add_norm",
                i + 1,
                (
                    ("x", "buf:x"),
                    ("y", "buf:y"),
                    ("w", lw(i + 1, "input_layernorm")),
                    ("out", "buf:xn"),
                    ("meta", "rt:meta"),
                ),
            )
        )
    consts = (
        ("layers", L),
        ("hidden", D),
        ("heads", H),
        ("kv_heads", KV),
        ("head_dim", hd),
        ("intermediate", F),
        ("max_seq_len", S),
        ("qk_norm", bool(cfg.qk_norm)),
    )
    return PrefillProgram(C, buffers, kernels, tuple(la), consts)


def _check_adjacent(decode: Schedule, layers: int) -> None:
    """q, k, v and gate, up weights back to back in the weights arena, each layer."""
    where = {n: off for n, a, off in decode.layout if a == "weights"}
    decls = {t.name: t for t in decode.program.tensors}
    for i in range(layers):
        p = f"model.layers.{i}."
        for group in (
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            ("mlp.gate_proj", "mlp.up_proj"),
        ):
            names = [f"{p}{g}.weight" for g in group]
            for a, b in zip(names, names[1:], strict=False):
                if where[a] + decls[a].arena_units != where[b]:
                    raise PrefillPlanError(
                        f"prefill: '{b}' does not follow '{a}' in the weight layout"
                    )
