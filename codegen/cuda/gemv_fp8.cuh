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
  static constexpr int kSplit = kRows >= kCWarps ? 1 : kCWarps / kRows;
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

// stream_rows (gemv.cuh) for FP8 rows: the same chunk walk, warp items and ypart slots.
template <int K, int R, int QBK>
__device__ void stream_rows_fp8(const Params& p, const long long* rec, int task, const float* x,
                                float* ypart, Ring& ring, int total) {
  using C = Fp8Chunking<K, QBK>;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const float4* xv = reinterpret_cast<const float4*>(x);
  constexpr int kSlice = (K / 8 + C::kSplit - 1) / C::kSplit, kJ = (kSlice + 31) / 32;
  constexpr bool kXRegs = 8 * kJ <= kXRegFloats;
  constexpr bool kPerRow = QBK >= K;  // one scale per row: applied to the row's sum
  static_assert(C::kSplit == 1 || C::kRows * C::kSplit <= kCWarps, "a warp's slice must not change");
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
      if (ok) {
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
