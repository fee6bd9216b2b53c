// FP8 weight-only GEMVs: the ring streams e4m3 rows (half the bytes of bf16) with their
// float32 scales (ir/precision.py: a row is K e4m3 bytes, then one scale per k-block of
// QBK columns, then padding to 16 bytes), and the consumers dequantize in registers: the
// hardware's packed e4m3x2 -> f16x2 convert, then float32 as for bf16 (models/quant.py's
// rule: float(e4m3) * scale; x stays float32). QBK == K: one scale per row, applied once
// to the row's sum; QBK < K (block-wise 128x128): each lane's 8-column group lies in one
// k-block and is scaled by it. The task functions are overloads of the bf16 ones with the
// QBK static added (codegen renders `task_<kind><..., QBK>` for FP8 variants only).
// From kernel.cu: kCWarps, kConsumers, kStageBytes, kRing, kXRegFloats, kScratchFloats,
// kProfile, F_NSTREAM, F_STREAM, Params (stream, w, act).
#pragma once
#include <cuda_fp8.h>

#include "gemv.cuh"

namespace tilert {

// Bytes of one FP8 row (ir/precision.py fp8_row_bytes) and rows per ring stage.
template <int K, int QBK>
struct Fp8Chunking {
  static_assert(K % 8 == 0 && (QBK == K || QBK % 8 == 0), "8-column groups lie in one k-block");
  static constexpr int kScales = (K + QBK - 1) / QBK;
  static constexpr int kRowBytes = (K + 4 * kScales + 15) / 16 * 16;
  static constexpr int kRows = kStageBytes / kRowBytes > 0 ? kStageBytes / kRowBytes : 1;
  // The tensor-core loops (the plan's fp8_mma, below) take whole 64-column spans and
  // k-blocks: 8 rows an mma (chunks of 4 rows or more), or for fewer rows (K of 8192 and
  // more) 8 segments of 512 columns of one row (K a multiple of 512). Every consumer warp
  // takes a K-slice of every row.
  static constexpr bool kDiag = kRows < 4;
  static constexpr bool kMma = kFp8Mma && K % 64 == 0 && (QBK >= K || QBK % 64 == 0) &&
                               (!kDiag || K % 512 == 0);
  static constexpr int kSplit = kMma ? kCWarps : kRows >= kCWarps ? 1 : kCWarps / kRows;
  static_assert(kRowBytes <= kStageBytes, "one weight row must fit a ring stage");
};

// Two e4m3 values -> two floats, through the packed hardware convert (exact: every e4m3
// value is a half).
__device__ __forceinline__ float2 e4m3x2_to_float2(unsigned short v) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(v, __NV_E4M3);
  return __half22float2(*reinterpret_cast<const __half2*>(&h));
}

// 8 e4m3 weights (columns 8c .. 8c + 8) dotted with x's a = x[8c .. 8c + 4),
// b = x[8c + 4 .. 8c + 8), unscaled.
__device__ __forceinline__ float dot8_e4m3(uint2 w, float4 a, float4 b) {
  const float2 w0 = e4m3x2_to_float2((unsigned short)(w.x & 0xffffu));
  const float2 w1 = e4m3x2_to_float2((unsigned short)(w.x >> 16));
  const float2 w2 = e4m3x2_to_float2((unsigned short)(w.y & 0xffffu));
  const float2 w3 = e4m3x2_to_float2((unsigned short)(w.y >> 16));
  return w0.x * a.x + w0.y * a.y + w1.x * a.z + w1.y * a.w + w2.x * b.x + w2.y * b.y +
         w3.x * b.z + w3.y * b.w;
}

__device__ __forceinline__ uint2 ld_weight8(const uint2* w) {
  if constexpr (kRing) {
    return *w;
  } else {
    uint2 v;
    asm volatile("ld.global.nc.L1::no_allocate.v2.u32 { %0, %1 }, [%2];"
                 : "=r"(v.x), "=r"(v.y) : "l"(w));
    return v;
  }
}

// ---------------------------------------------------------------- tensor-core FP8 rows
// The plan's fp8_mma (Options.fp8_gemv "mma"; not the default until measured). The FFMA
// loop above issues ~23 instructions per 8 weight bytes (bench/NOTES.md item 139), which
// leaves an SM issue-bound at the copy rate. Here one mma.sync m16n8k16 (f16 inputs,
// float32 accumulators) takes 8 weight rows x 16 columns: the weights are its B operand
// (n: the row), x its A operand, row 0 x_hi and row 8 x_lo (x scaled by a power of two so
// that |x| < 2^15, then split into two f16 parts: ~22 significant bits), the other rows
// copies of those (never read). Per 16 weight bytes a lane issues one 16-byte load, 8
// converts and 4 mma, plus 4 loads of x (broadcasts) shared by the row groups it takes:
// ~14-17 instructions, against ~46 in the FFMA loop (bf16's: ~19).
//
// Column order: the dot product is a sum, so any order of the columns serves when x and
// the weights take the same. Within a 64-column span s, lane (g, q) (g = lane / 4, q =
// lane % 4) takes in k-step j = 0..3 the columns c = 64 s + 16 q + 4 j + {0, 1, 2, 3}:
// one 16-byte load gives a weight row's 4 k-steps. They are the mma's k positions 2q, 2q+1
// (a0 a1 / a2 a3, b0 b1) and 2q+8, 2q+9 (a4 a5 / a6 a7, b2 b3): the PTX ISA's m16n8k16
// fragments. A lane's B holds column n = g of its 8-row group (row kRowOf(n), below);
// lanes 0-3 get columns 2q, 2q + 1 times x_hi in c0 c1 and times x_lo in c2 c3.
template <int K, int QBK>
struct Fp8Mma {
  using C = Fp8Chunking<K, QBK>;
  static constexpr int kGroups = (C::kRows + 7) / 8;    // 8-row groups a chunk
  static constexpr int kG = kGroups < 4 ? kGroups : 4;  // groups a pass
  static constexpr int kC = kG == 1 ? 4 : kG == 2 ? 2 : 1;  // accumulators a group
  // A 16-byte load is served 8 lanes at a time: lanes 8p .. 8p + 7 read B columns n = 2p,
  // 2p + 1 at the same 64 bytes of two rows, which share no bank when the rows lie 64
  // bytes apart modulo 128. Column n takes row kRowOf(n) of the group: rows kD apart in
  // each such pair (kD = 0: rows are a multiple of 128 bytes apart, two wavefronts a
  // quarter-warp whatever the order; 128x128-block rows of K = 4096 are).
  static constexpr int kMod = C::kRowBytes % 128;
  static constexpr int kD = kMod == 64 ? 1 : kMod % 64 == 32 ? 2 : kMod % 32 == 16 ? 4 : 0;
  __host__ __device__ static constexpr int kRowOf(int n) {
    return kD == 2 ? (n >> 1 & 1) + 4 * (n >> 2) + 2 * (n & 1)
           : kD == 4 ? (n >> 1) + 4 * (n & 1)
                     : n;
  }
};

__device__ __forceinline__ unsigned half2_bits(__half2 h) {
  return *reinterpret_cast<const unsigned*>(&h);
}

// The two e4m3 values of v's low (HI false) or high 16 bits -> their f16x2 bits (exact);
// the hardware convert reads either half of a register.
template <bool HI>
__device__ __forceinline__ unsigned e4m3x2_half2(unsigned v) {
  unsigned r;
  if constexpr (HI)
    asm("{ .reg .b16 lo, hi;\n mov.b32 {lo, hi}, %1;\n cvt.rn.f16x2.e4m3x2 %0, hi;\n}"
        : "=r"(r) : "r"(v));
  else
    asm("{ .reg .b16 lo, hi;\n mov.b32 {lo, hi}, %1;\n cvt.rn.f16x2.e4m3x2 %0, lo;\n}"
        : "=r"(r) : "r"(v));
  return r;
}

// d += a * b for one m16n8k16 tile, f16 inputs and float32 accumulators; b: the 4 e4m3
// weights of `w` (b0 b1 from its low bytes).
__device__ __forceinline__ void mma_e4m3(float (&d)[4], uint4 a, unsigned w) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7},"
      " {%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(e4m3x2_half2<false>(w)),
        "r"(e4m3x2_half2<true>(w)));
}

// x (K floats in plain order in shared memory: load_rows with PLAIN) -> lanes 0-3's A
// registers, in place: uint4 slot s * 16 + 4 j + q holds lane q's {x_hi, x_lo of columns
// c, c + 1; x_hi, x_lo of c + 2, c + 3} for span s, k-step j (c above): a k-step's 4
// slots are 64 contiguous bytes (one wavefront), and a span's slots take the span's own
// 64 floats, so a warp converts a span alone (reads, __syncwarp, writes). The scale
// comes from the largest finite |x|; an infinite x gives x_hi = inf, x_lo = 0 (its rows
// come out infinite, as from FFMA). Returns the factor 2^-e every product carries.
template <int K>
__device__ __forceinline__ float x_to_mma_frags(float* x, float* red) {
  const auto fin = [](float v) { return isfinite(v) ? fabsf(v) : 0.f; };
  float m = 0.f;
  for (int i = threadIdx.x * 4; i < K; i += kConsumers * 4) {
    const float4 v = *reinterpret_cast<const float4*>(x + i);
    m = fmaxf(m, fmaxf(fmaxf(fin(v.x), fin(v.y)), fmaxf(fin(v.z), fin(v.w))));
  }
  m = block_max(m, red);  // its barriers also end every read above
  int e = 0;
  if (m > 0.f) {
    frexpf(m, &e);         // m < 2^e
    e = min(15 - e, 126);  // m * 2^(15 - e) < 2^15
  }
  const float scale = ldexpf(1.f, e);
  const int warp = threadIdx.x >> 5, c = 2 * (threadIdx.x & 31);  // c: the lane's 2 columns
  const auto rest = [](float a, float hi) { return isinf(hi) ? 0.f : a - hi; };
  for (int s = warp; s < K / 64; s += kCWarps) {
    const float2 v = reinterpret_cast<const float2*>(x + 64 * s)[c / 2];
    __syncwarp();
    const float a0 = v.x * scale, a1 = v.y * scale;
    const __half2 hi = __floats2half2_rn(a0, a1);
    const float2 back = __half22float2(hi);
    const __half2 lo = __floats2half2_rn(rest(a0, back.x), rest(a1, back.y));
    const int slot = s * 16 + 4 * ((c >> 2) & 3) + (c >> 4);  // j = c / 4 % 4, q = c / 16
    reinterpret_cast<uint2*>(x)[2 * slot + ((c >> 1) & 1)] =
        make_uint2(half2_bits(hi), half2_bits(lo));
    __syncwarp();  // the next span's reads come after every lane's writes of this one
  }
  sync_consumers();
  return 1.f / scale;
}

// Row `row` of a chunk's scale of k-block b (the floats after its K e4m3 bytes).
template <int K, int QBK>
__device__ __forceinline__ float row_scale(const char* chunk, int row, int b) {
  const char* r = chunk + (long long)row * Fp8Chunking<K, QBK>::kRowBytes;
  return reinterpret_cast<const float*>(r + K)[b];
}

// The rows of a chunk (n of them, at `chunk`, kRowBytes apart) dotted with x on tensor
// cores: every warp takes its K-slice (whole 64-column spans) of every row, and writes
// the row's partial to ypart[warp * R + y0 + row]. With k-blocks (QBK < K) it scales its
// sums at each block's end and at its slice's end (a block may straddle two slices). A
// warp keeps kG x kC accumulators going (four, or three when kG = 3): the bf16 decode GEMV
// on tensor cores (option mma_gemv, retired) lost 1.1-1.9x on H100, partly to one
// dependent mma chain per warp (bench/NOTES.md items 43-44).
template <int K, int R, int QBK>
__device__ __forceinline__ void chunk_rows_mma(const char* chunk, int n, const uint4* xf,
                                               float xinv, float* ypart, int y0) {
  using C = Fp8Chunking<K, QBK>;
  using M = Fp8Mma<K, QBK>;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int s0 = warp * (K / 64) / kCWarps, s1 = (warp + 1) * (K / 64) / kCWarps;
  const int rg = M::kRowOf(g);                             // the row of B column g
  const int rq[2] = {M::kRowOf(2 * q), M::kRowOf(2 * q + 1)};  // of D columns 2q, 2q + 1
  for (int g0 = 0; g0 < n; g0 += 8 * M::kG) {
    float d[M::kG][M::kC][4], tot[M::kG][2];
#pragma unroll
    for (int G = 0; G < M::kG; ++G) {
      tot[G][0] = tot[G][1] = 0.f;
#pragma unroll
      for (int c = 0; c < M::kC; ++c) d[G][c][0] = d[G][c][1] = d[G][c][2] = d[G][c][3] = 0.f;
    }
    // Lanes 0-3: group G's row 2q + h times x (x_hi in c0 c1, x_lo in c2 c3), so far.
    const auto take = [&](int G, int h) {
      float v = 0.f;
#pragma unroll
      for (int c = 0; c < M::kC; ++c) v += d[G][c][h] + d[G][c][h + 2], d[G][c][h] = d[G][c][h + 2] = 0.f;
      return v;
    };
#pragma unroll 2
    for (int s = s0; s < s1; ++s) {
      // Lane q's A registers; the other lanes load lane q % 4's too (a broadcast): A rows
      // 1-7 and 9-15 then repeat x, and the D rows they give are never read.
      uint4 xfrag[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) xfrag[j] = xf[s * 16 + 4 * j + q];
      uint4 w[M::kG];
#pragma unroll
      for (int G = 0; G < M::kG; ++G) {
        const int row = g0 + 8 * G + rg;
        const char* at = chunk + (long long)row * C::kRowBytes + 64 * s + 16 * q;
        w[G] = row < n ? ld_weight(reinterpret_cast<const uint4*>(at)) : make_uint4(0u, 0u, 0u, 0u);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int G = 0; G < M::kG; ++G)
          mma_e4m3(d[G][j % M::kC], xfrag[j],
                   j == 0 ? w[G].x : j == 1 ? w[G].y : j == 2 ? w[G].z : w[G].w);
      }
      if constexpr (QBK < K) {
        if ((s + 1) * 64 % QBK == 0 || s + 1 == s1) {  // block b's end: sums times scales
          const int b = s * 64 / QBK;
#pragma unroll
          for (int G = 0; G < M::kG; ++G) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int row = g0 + 8 * G + rq[h];
              const float v = take(G, h);
              if (lane < 4 && row < n) tot[G][h] += v * row_scale<K, QBK>(chunk, row, b);
            }
          }
        }
      }
    }
#pragma unroll
    for (int G = 0; G < M::kG; ++G) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = g0 + 8 * G + rq[h];
        if (lane < 4 && row < n) {
          float v = QBK < K ? tot[G][h] : take(G, h);
          if constexpr (QBK >= K) v *= row_scale<K, QBK>(chunk, row, 0);
          ypart[warp * R + y0 + row] = v * xinv;
        }
      }
    }
  }
}

// chunk_rows_mma for a chunk of 1-3 rows: 8 columns of one row an mma would leave most of
// it idle, so an mma takes one row's 8 segments instead. A warp's K-slice is whole blocks
// of 512 columns (8 spans); in block t, lane (g, q) takes span 8t + g: B column g is the
// row's span 8t + g and A rows g, g + 8 are x_hi, x_lo of the same span (the same slots as
// chunk_rows_mma's), so D's diagonal D[g][g] + D[g + 8][g] is span 8t + g's dot product,
// held by lane 4g + g / 2 (c_h, c_h+2 with h = g % 2); the other entries mix spans and are
// never read. The x loads are no longer broadcasts, but serve every row of the chunk.
template <int K, int R, int QBK>
__device__ __forceinline__ void chunk_rows_mma_diag(const char* chunk, int n, const uint4* xf,
                                                    float xinv, float* ypart, int y0) {
  using C = Fp8Chunking<K, QBK>;
  constexpr int kR = C::kRows;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int t0 = warp * (K / 512) / kCWarps, t1 = (warp + 1) * (K / 512) / kCWarps;
  const bool diag = q == g >> 1;
  const int h = g & 1;
  float d[kR][2][4], tot[kR];
#pragma unroll
  for (int r = 0; r < kR; ++r) {
    tot[r] = 0.f;
#pragma unroll
    for (int c = 0; c < 2; ++c) d[r][c][0] = d[r][c][1] = d[r][c][2] = d[r][c][3] = 0.f;
  }
  const auto take = [&](int r) {  // this lane's diagonal entry (x_hi + x_lo parts), so far
    float v = 0.f;
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      v += h ? d[r][c][1] + d[r][c][3] : d[r][c][0] + d[r][c][2];
      d[r][c][0] = d[r][c][1] = d[r][c][2] = d[r][c][3] = 0.f;
    }
    return diag ? v : 0.f;
  };
  for (int t = t0; t < t1; ++t) {
    const int s = 8 * t + g;  // this lane's span
    uint4 xfrag[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) xfrag[j] = xf[s * 16 + 4 * j + q];
    uint4 w[kR];
#pragma unroll
    for (int r = 0; r < kR; ++r) {
      const char* at = chunk + (long long)r * C::kRowBytes + 64 * s + 16 * q;
      w[r] = r < n ? ld_weight(reinterpret_cast<const uint4*>(at)) : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int r = 0; r < kR; ++r)
        mma_e4m3(d[r][j & 1], xfrag[j],
                 j == 0 ? w[r].x : j == 1 ? w[r].y : j == 2 ? w[r].z : w[r].w);
    }
    if constexpr (QBK < K) {  // every lane's span lies in one k-block: scale it now
#pragma unroll
      for (int r = 0; r < kR; ++r) {
        const float v = take(r);
        if (diag && r < n) tot[r] += v * row_scale<K, QBK>(chunk, r, s * 64 / QBK);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kR; ++r) {
    float v = warp_sum(QBK < K ? tot[r] : take(r));  // the 8 diagonal lanes' spans
    if (lane == 0 && r < n) {
      if constexpr (QBK >= K) v *= row_scale<K, QBK>(chunk, r, 0);
      ypart[warp * R + y0 + r] = v * xinv;
    }
  }
}

// stream_rows (gemv.cuh) for FP8 rows: the same chunk walk, warp items and ypart slots.
template <int K, int R, int QBK>
__device__ void stream_rows_fp8(const Params& p, const long long* rec, int task, float* x,
                                float* ypart, float* red, Ring& ring, int total) {
  using C = Fp8Chunking<K, QBK>;
  float xinv = 1.f;
  if constexpr (C::kMma) xinv = x_to_mma_frags<K>(x, red);  // x is then A fragments
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const float4* xv = reinterpret_cast<const float4*>(x);
  constexpr int kSlice = (K / 8 + C::kSplit - 1) / C::kSplit, kJ = (kSlice + 31) / 32;
  constexpr bool kXRegs = !C::kMma && 8 * kJ <= kXRegFloats;
  constexpr bool kPerRow = QBK >= K;  // one scale per row: applied to the row's sum
  static_assert(C::kMma || C::kSplit == 1 || C::kRows * C::kSplit <= kCWarps,
                "a warp's slice must not change");
  static_assert(K + C::kSplit * R <= kScratchFloats, "x and ypart are codegen's scratch_floats");
  const int c0 = warp % C::kSplit * kSlice + lane;
  const int c_end = min(K / 8, (warp % C::kSplit + 1) * kSlice);
  float4 xa[kXRegs ? kJ : 1], xb[kXRegs ? kJ : 1];
  if constexpr (kXRegs) {
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      const int c = c0 + 32 * j;
      xa[j] = c < c_end ? xv[c] : make_float4(0.f, 0.f, 0.f, 0.f);
      xb[j] = c < c_end ? xv[K / 8 + c] : make_float4(0.f, 0.f, 0.f, 0.f);
    }
  }
  const long long* st = p.stream + 3 * rec[F_STREAM];  // without the ring: the entries
  bool ok = true;
  int ybase = 0;
  const int rows = total / (int)rec[F_NSTREAM];
  for (int e = 0; e < rec[F_NSTREAM]; ++e) {
    const long long off = kRing ? 0 : st[3 * e];
    for (int r0 = 0; r0 < rows; r0 += C::kRows) {
      const int n = min(C::kRows, rows - r0);
      const char* chunk;
      unsigned t_c = 0;  // profiled: when the chunk was there
      if constexpr (kRing) {
        const unsigned t_w = kProfile ? (unsigned)global_timer() : 0u;
        if (ok) ok = mbar_wait(ring.full + ring.stage, ring.phase, p, task);
        ok = __all_sync(0xffffffffu, ok);
        if constexpr (kProfile) {
          t_c = (unsigned)global_timer();
          if (threadIdx.x == 0) s_weight_wait_ns += t_c - t_w;
        }
        chunk = ring.base + ring.stage * kStageBytes;
      } else {
        chunk = reinterpret_cast<const char*>(p.w + off) + (long long)r0 * C::kRowBytes;
      }
      if constexpr (C::kMma && C::kDiag) {
        if (ok)
          chunk_rows_mma_diag<K, R, QBK>(chunk, n, reinterpret_cast<const uint4*>(x), xinv,
                                         ypart, ybase + r0);
      } else if constexpr (C::kMma) {
        if (ok)
          chunk_rows_mma<K, R, QBK>(chunk, n, reinterpret_cast<const uint4*>(x), xinv, ypart,
                                    ybase + r0);
      } else if (ok) {
        for (int item = warp; item < n * C::kSplit; item += kCWarps) {
          const int rr = item / C::kSplit, s = item % C::kSplit;
          const char* rowp = chunk + rr * C::kRowBytes;
          const uint2* row = reinterpret_cast<const uint2*>(rowp);
          const float* scale = reinterpret_cast<const float*>(rowp + K);  // [kScales]
          float acc = 0.f;
          if constexpr (kXRegs) {
#pragma unroll
            for (int j = 0; j < kJ; ++j) {
              const int c = c0 + 32 * j;
              if (c < c_end) {
                const float d = dot8_e4m3(ld_weight8(row + c), xa[j], xb[j]);
                acc += kPerRow ? d : d * scale[8 * c / QBK];
              }
            }
          } else {
#pragma unroll 8
            for (int c = c0; c < c_end; c += 32) {
              const float d = dot8_e4m3(ld_weight8(row + c), xv[c], xv[K / 8 + c]);
              acc += kPerRow ? d : d * scale[8 * c / QBK];
            }
          }
          acc = warp_sum(acc);
          if (lane == 0) ypart[s * R + ybase + r0 + rr] = kPerRow ? acc * scale[0] : acc;
        }
      }
      if constexpr (kRing) {
        if constexpr (kProfile)
          if (threadIdx.x == 0) s_chunk_ns += (unsigned)global_timer() - t_c;
        mbar_arrive(ring.empty + ring.stage);  // every lane: see stream_rows
        ring.advance();
      }
    }
    ybase += rows;
  }
  sync_consumers();
  mark_computed();
}

template <int K, int R, int QBK>
__device__ __forceinline__ float row_result_fp8(const float* ypart, int r) {
  float y = 0.f;
#pragma unroll
  for (int s = 0; s < Fp8Chunking<K, QBK>::kSplit; ++s) y += ypart[s * R + r];
  return y;
}

}  // namespace tilert
