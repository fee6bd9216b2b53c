"""The prefill program's tensor-core kernels as TileLang tile programs.

Each function returns a `T.prim_func` specialised on static shapes; `codegen/prefill.py`
lowers them for sm_90a without a GPU (`tilelang.lower` inside the target) and compiles
the CUDA source with the rest of the prefill kernels. TileLang turns the GEMMs into
warp-specialised TMA + wgmma pipelines. tilelang is imported only here, and only when a
prefill program is compiled: the runtime never needs it.

Shapes in comments: M = the chunk's tokens (static; a launch runs ceil(n / block_m) row
blocks), N = output columns, K = the reduction.
"""

import struct

# No `from __future__ import annotations`: TileLang evaluates the parameter annotations.


def gemm(
    M: int,
    N: int,
    K: int,
    block_n: int,
    block_m: int = 128,
    block_k: int = 64,
    stages: int = 3,
    swizzle: int = 0,
    QBK: int = 0,
    RB: int = 0,
):
    """c[M, N] f32 = a[M, K] @ b[N, K].T, a and b bf16. `swizzle`: blocks visit the
    output in panels this many row blocks tall (L2 reuse of B); 0: row after row.
    QBK > 0: b is FP8 rows of RB bytes (gemm_fp8)."""
    if QBK:
        return gemm_fp8(M, N, K, block_n, QBK, RB, block_m, block_k, stages, swizzle)
    import tilelang.language as T

    bm, bn, bk = block_m, block_n, block_k

    @T.prim_func
    def main(
        A: T.Tensor((M, K), "bfloat16"),
        B: T.Tensor((N, K), "bfloat16"),
        C: T.Tensor((M, N), "float32"),
    ):
        with T.Kernel(T.ceildiv(N, bn), T.ceildiv(M, bm), threads=256) as (bx, by):
            a_s = T.alloc_shared((bm, bk), "bfloat16")
            b_s = T.alloc_shared((bn, bk), "bfloat16")
            acc = T.alloc_fragment((bm, bn), "float32")
            T.use_swizzle(swizzle, enable=swizzle > 0)
            T.clear(acc)
            for k in T.Pipelined(T.ceildiv(K, bk), num_stages=stages):
                T.copy(A[by * bm, k * bk], a_s)
                T.copy(B[bx * bn, k * bk], b_s)
                T.gemm(a_s, b_s, acc, transpose_B=True)
            T.copy(acc, C[by * bm, bx * bn])

    return main


def gemm_silu(
    M: int,
    N: int,
    K: int,
    block_n: int,
    block_m: int = 128,
    block_k: int = 64,
    stages: int = 3,
    swizzle: int = 0,
    QBK: int = 0,
    RB: int = 0,
):
    """out[M, N] bf16 = silu(a @ b[:N].T) * (a @ b[N:].T): gate and up rows of one
    [2N, K] weight, two accumulators per block, SiLU·mul in the epilogue.
    QBK > 0: b is FP8 rows of RB bytes (gemm_fp8)."""
    if QBK:
        return gemm_fp8(M, N, K, block_n, QBK, RB, block_m, block_k, stages, swizzle, silu=True)
    import tilelang.language as T

    bm, bn, bk = block_m, block_n, block_k

    @T.prim_func
    def main(
        A: T.Tensor((M, K), "bfloat16"),
        B: T.Tensor((2 * N, K), "bfloat16"),
        C: T.Tensor((M, N), "bfloat16"),
    ):
        with T.Kernel(T.ceildiv(N, bn), T.ceildiv(M, bm), threads=256) as (bx, by):
            a_s = T.alloc_shared((bm, bk), "bfloat16")
            g_s = T.alloc_shared((bn, bk), "bfloat16")
            u_s = T.alloc_shared((bn, bk), "bfloat16")
            g = T.alloc_fragment((bm, bn), "float32")
            u = T.alloc_fragment((bm, bn), "float32")
            T.use_swizzle(swizzle, enable=swizzle > 0)
            T.clear(g)
            T.clear(u)
            for k in T.Pipelined(T.ceildiv(K, bk), num_stages=stages):
                T.copy(A[by * bm, k * bk], a_s)
                T.copy(B[bx * bn, k * bk], g_s)
                T.copy(B[N + bx * bn, k * bk], u_s)
                T.gemm(a_s, g_s, g, transpose_B=True)
                T.gemm(a_s, u_s, u, transpose_B=True)
            for i, j in T.Parallel(bm, bn):
                g[i, j] = g[i, j] / (1.0 + T.exp(-g[i, j])) * u[i, j]
            T.copy(g, C[by * bm, bx * bn])

    return main


def gemm_fp8(
    M: int,
    N: int,
    K: int,
    block_n: int,
    QBK: int,
    RB: int,
    block_m: int = 128,
    block_k: int = 64,
    stages: int = 3,
    swizzle: int = 0,
    silu: bool = False,
):
    """gemm (or gemm_silu with `silu`) with an FP8 B: its rows as the weights arena holds
    them (ir/precision.py), RB bytes each: K e4m3 values, then float32 scales, one per
    k-block of QBK columns (QBK >= K: one per row). b's rows: N, or 2N (gate, up) with silu.

    Weight-only: each B tile comes by TMA as e4m3 ([bn, bk], half a bf16 tile's bytes),
    is widened in registers to a bf16 tile in shared memory, and multiplies on the same
    wgmma as the bf16 GEMM. With one scale per row (QBK >= K) the tile is the e4m3 values
    themselves (exact in bf16) and the scale multiplies the accumulator column in the
    epilogue: c[m, n] = (a @ float(q).T)[m, n] * s[n]. With k-blocks (QBK a multiple of
    bk) the tile is bf16(float(q) * s[n, k // QBK]); the row's scales for a tile come by
    TMA too, 4 of them (16 bytes, the least a TMA box takes), beside the values."""
    import tilelang.language as T

    bm, bn, bk = block_m, block_n, block_k
    rows = 2 * N if silu else N
    per_row = QBK >= K
    s_at = K // 4  # the row's first scale, in float32 units
    assert per_row or QBK % bk == 0, (QBK, bk)
    out_dtype = "bfloat16" if silu else "float32"
    halves = 2 if silu else 1  # B tiles a stage: gate and up, or the one

    @T.prim_func
    def main(
        A: T.Tensor((M, K), "bfloat16"),
        B: T.Tensor((rows, RB), "uint8"),
        C: T.Tensor((M, N), out_dtype),
    ):
        with T.Kernel(T.ceildiv(N, bn), T.ceildiv(M, bm), threads=256) as (bx, by):
            # two views of the same rows: as float32 words, the scales at words K / 4 ..,
            # and the e4m3 values [rows, K], RB bytes apart (the last view made names the
            # kernel's parameter: B, as the bf16 GEMM's)
            Bs = T.Tensor((rows, RB // 4), "float32", B.data)
            B = T.StridedTensor((rows, K), (RB, 1), "float8_e4m3fn", data=B.data)
            a_s = T.alloc_shared((bm, bk), "bfloat16")
            # per B tile of a stage (gate and up, or the one): e4m3 tile, its bf16 form,
            # its rows' scales, the accumulator
            q_s = [T.alloc_shared((bn, bk), "float8_e4m3fn") for _ in range(halves)]
            w_s = [T.alloc_shared((bn, bk), "bfloat16") for _ in range(halves)]
            s_s = [T.alloc_shared((bn, 4), "float32") for _ in range(halves)]
            q_f = [T.alloc_fragment((bn, bk), "float8_e4m3fn") for _ in range(halves)]
            acc = [T.alloc_fragment((bm, bn), "float32") for _ in range(halves)]
            T.use_swizzle(swizzle, enable=swizzle > 0)
            tiles = list(zip(q_s, w_s, s_s, q_f, acc, [0, N][:halves], strict=True))
            for t in tiles:
                T.clear(t[4])
            for k in T.Pipelined(T.ceildiv(K, bk), num_stages=stages):
                T.copy(A[by * bm, k * bk], a_s)
                g = k * bk // QBK  # this tile's k-block (when it has its own scales)
                for q, _, sc, _, _, r0 in tiles:
                    T.copy(B[r0 + bx * bn, k * bk], q)
                    if not per_row:
                        T.copy(Bs[r0 + bx * bn, s_at + g // 4 * 4], sc)
                for q, w, sc, qf, _, _ in tiles:
                    T.copy(q, qf)
                    if per_row:
                        for i, j in T.Parallel(bn, bk):
                            w[i, j] = T.cast(qf[i, j], "bfloat16")
                    else:
                        for i, j in T.Parallel(bn, bk):
                            w[i, j] = T.cast(T.cast(qf[i, j], "float32") * sc[i, g % 4], "bfloat16")
                for _, w, _, _, c, _ in tiles:
                    T.gemm(a_s, w, c, transpose_B=True)
            if per_row:
                for _, _, _, _, c, r0 in tiles:
                    for i, j in T.Parallel(bm, bn):
                        c[i, j] = c[i, j] * Bs[r0 + bx * bn + j, s_at]
            if silu:
                gate, up = acc
                for i, j in T.Parallel(bm, bn):
                    gate[i, j] = gate[i, j] / (1.0 + T.exp(-gate[i, j])) * up[i, j]
            T.copy(acc[0], C[by * bm, bx * bn])

    return main


def attention(
    M: int,
    H: int,
    KV: int,
    HD: int,
    S: int,
    block_m: int,
    pack: int = 1,
    block_n: int = 64,
    stages: int = 1,
):
    """out[M, H, HD] bf16: causal grouped-query attention of the chunk's queries q[M, H, HD]
    (bf16, normed and rotated) over the float32 cache rows [KV, S, HD] 0 .. pos + r, where
    pos, n = meta[0], meta[1]. A block takes `block_m` tokens of `pack` q heads that share
    a kv head, as block_m * pack query rows (token-major), so each cache row it loads
    serves them all. Cache rows past pos + n - 1 are never read (zeros in their place),
    so rows not yet written cannot reach a result."""
    import tilelang.language as T

    group = H // KV
    # softmax in base 2; a float32 value, so the literal in the source is exact
    scale = struct.unpack("f", struct.pack("f", HD**-0.5 * 1.4426950408889634))[0]
    bm, bn, q_rows = block_m, block_n, block_m * pack
    neg_inf = -T.infinity("float32")
    threads = 256 if q_rows >= 128 else 128

    @T.prim_func
    def main(
        Q: T.Tensor((M, H, HD), "bfloat16"),
        Kc: T.Tensor((KV, S, HD), "float32"),
        Vc: T.Tensor((KV, S, HD), "float32"),
        Out: T.Tensor((M, H, HD), "bfloat16"),
        meta: T.Tensor((2,), "int32"),
    ):
        with T.Kernel(T.ceildiv(M, bm), H // pack, threads=threads) as (bx, by):
            q_s = T.alloc_shared((q_rows, HD), "bfloat16")
            k_s = T.alloc_shared((bn, HD), "bfloat16")
            v_s = T.alloc_shared((bn, HD), "bfloat16")
            o_s = T.alloc_shared((q_rows, HD), "bfloat16")
            s = T.alloc_fragment((q_rows, bn), "float32")
            p = T.alloc_fragment((q_rows, bn), "bfloat16")
            acc = T.alloc_fragment((q_rows, HD), "float32")
            m = T.alloc_fragment((q_rows,), "float32")
            m_prev = T.alloc_fragment((q_rows,), "float32")
            rescale = T.alloc_fragment((q_rows,), "float32")
            row_sum = T.alloc_fragment((q_rows,), "float32")
            denom = T.alloc_fragment((q_rows,), "float32")
            kvh = by * pack // group
            pos = meta[0]
            # keys 0 .. pos + r for query row r, and never past the chunk's last row
            kv_len = T.min(pos + (bx + 1) * bm, pos + meta[1])
            for i, d in T.Parallel(q_rows, HD):  # row i: token i // pack, head i % pack
                q_s[i, d] = Q[bx * bm + i // pack, by * pack + i % pack, d]
            T.fill(acc, 0)
            T.fill(denom, 0)
            T.fill(m, neg_inf)
            for kb in T.Pipelined(T.ceildiv(kv_len, bn), num_stages=stages):
                for i, j in T.Parallel(bn, HD):
                    k_s[i, j] = T.if_then_else(kb * bn + i < kv_len, Kc[kvh, kb * bn + i, j], 0)
                for i, j in T.Parallel(bn, HD):
                    v_s[i, j] = T.if_then_else(kb * bn + i < kv_len, Vc[kvh, kb * bn + i, j], 0)
                T.clear(s)
                T.gemm(q_s, k_s, s, transpose_B=True, policy=T.GemmWarpPolicy.FullRow)
                for i, j in T.Parallel(q_rows, bn):
                    s[i, j] = T.if_then_else(
                        kb * bn + j <= pos + bx * bm + i // pack, s[i, j], neg_inf
                    )
                T.copy(m, m_prev)
                T.reduce_max(s, m, dim=1, clear=False)
                for i in T.Parallel(q_rows):
                    rescale[i] = T.exp2(m_prev[i] * scale - m[i] * scale)
                for i, j in T.Parallel(q_rows, HD):
                    acc[i, j] *= rescale[i]
                for i, j in T.Parallel(q_rows, bn):
                    s[i, j] = T.exp2(s[i, j] * scale - m[i] * scale)
                T.copy(s, p)
                T.gemm(p, v_s, acc, policy=T.GemmWarpPolicy.FullRow)
                T.reduce_sum(s, row_sum, dim=1)
                for i in T.Parallel(q_rows):
                    denom[i] = denom[i] * rescale[i] + row_sum[i]
            for i, j in T.Parallel(q_rows, HD):
                acc[i, j] /= denom[i]
            T.copy(acc, o_s)
            for i, d in T.Parallel(q_rows, HD):
                Out[bx * bm + i // pack, by * pack + i % pack, d] = o_s[i, d]

    return main


PROGRAMS = {"gemm": gemm, "gemm_silu": gemm_silu, "attention": attention}
