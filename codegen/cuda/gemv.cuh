// The GEMV building blocks: a task's input vector into shared memory (plain or rmsnormed),
// then its weight rows, chunk by chunk (from the ring, or without it from global memory),
// dotted with it by a warp per row (and K-slice), into per-slice partial results.
// From kernel.cu: kConsumers, kCWarps, kStageBytes, kEps, kRing, kXRegFloats, F_NSTREAM,
// F_STREAM, Params (stream, w).
#pragma once
#include "flags.cuh"
#include "profile.cuh"
#include "reduce.cuh"
#include "ring.cuh"
#include "task.cuh"

namespace tilert {

// A GEMV's input vector in shared memory: x[8c .. 8c + 4) at float4 c, x[8c + 4 .. 8c + 8)
// at float4 K / 8 + c, so the lanes of a warp, which take consecutive 8-column groups c,
// read consecutive 16-byte words of each half (no bank conflicts; interleaved, two lanes
// shared every bank: ncu counted 38 % of all shared wavefronts as excess, bench/NOTES.md).
__device__ __forceinline__ int x_slot(int i, int K) {
  return ((i >> 2) & 1) * (K / 8) + (i >> 3);
}

// x[0:K) <- act[src : src + K)   (K a multiple of 4; offsets 16-byte aligned), in x_slot
// order, or in plain order with PLAIN (the FP8 tensor-core GEMV's input). The loads
// go into registers, at most 10 float4 per thread at a time (K = 8192 in one batch), each
// batch made fresh together and then stored (a load written straight to shared memory in
// a loop waits for the previous iteration's store: the compiler cannot rule out that they
// alias; and every 12288-wide vector in registers at once spilled on qwen3-8b).
template <int K, bool PLAIN = false>
__device__ __forceinline__ void load_vec(const Params& p, const float* src, float* x, unsigned par,
                                         int task) {
  constexpr int kIt = (K / 4 + kConsumers - 1) / kConsumers;
  load_fresh<kIt, even_batch(kIt, 10), float4>(
      p,
      [&](int it) -> const float* {
        const int i = (threadIdx.x + it * kConsumers) * 4;
        return i < K ? src + i : nullptr;
      },
      [&](int it, float4 v) {
        const int i = (threadIdx.x + it * kConsumers) * 4;
        reinterpret_cast<float4*>(x)[PLAIN ? i / 4 : x_slot(i, K)] = v;
      },
      par, task);
  sync_consumers();
}

// x[0:K) <- rmsnorm(act[src : src + K)) * gamma: the vector and its weights are loaded in
// one phase (one L2 round trip), kept in registers across the reduction (PLAIN: load_vec).
template <int K, bool PLAIN = false>
__device__ __forceinline__ void load_norm(const Params& p, const float* src,
                                          const __nv_bfloat16* gamma, float* x, float* red,
                                          unsigned par, int task) {
  constexpr int kIt = (K / 4 + kConsumers - 1) / kConsumers;
  float4 v[kIt];
  uint2 gm[kIt];
  float ss = 0.f;
  const auto at = [&](int it) -> const float* {
    const int i = (threadIdx.x + it * kConsumers) * 4;
    return i < K ? src + i : nullptr;
  };
#pragma unroll
  for (int it = 0; it < kIt; ++it) {
    const int i = (threadIdx.x + it * kConsumers) * 4;
    if (i < K) {
      v[it] = ld_act4(src + i);
      gm[it] = __ldg(reinterpret_cast<const uint2*>(gamma + i));
    }
  }
  make_fresh(p, v, at, par, task);
#pragma unroll
  for (int it = 0; it < kIt; ++it)
    if (at(it) != nullptr)
      ss += v[it].x * v[it].x + v[it].y * v[it].y + v[it].z * v[it].z + v[it].w * v[it].w;
  const float r = 1.f / sqrtf(block_sum(ss, red) / K + kEps);
#pragma unroll
  for (int it = 0; it < kIt; ++it) {
    const int i = (threadIdx.x + it * kConsumers) * 4;
    if (i < K) {
      const float2 g01 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&gm[it].x));
      const float2 g23 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&gm[it].y));
      reinterpret_cast<float4*>(x)[PLAIN ? i / 4 : x_slot(i, K)] = make_float4(
          v[it].x * r * g01.x, v[it].y * r * g01.y, v[it].z * r * g23.x, v[it].w * r * g23.y);
    }
  }
  sync_consumers();
}

__device__ __forceinline__ float dot8(uint4 w, float4 a, float4 b) {
  const float2 w0 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w.x));
  const float2 w1 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w.y));
  const float2 w2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w.z));
  const float2 w3 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w.w));
  return w0.x * a.x + w0.y * a.y + w1.x * a.z + w1.y * a.w + w2.x * b.x + w2.y * b.y +
         w3.x * b.z + w3.y * b.w;
}

// Rows of K bf16 per chunk, and how many warps split one row's K when a chunk holds
// fewer rows than there are consumer warps (big K): every warp has work either way.
template <int K>
struct Chunking {
  static constexpr int kRows = kStageBytes / (2 * K) > 0 ? kStageBytes / (2 * K) : 1;
  static constexpr int kSplit = kRows >= kCWarps ? 1 : kCWarps / kRows;
  static_assert(2 * K <= kStageBytes, "one weight row must fit a ring stage");
};

// x <- act row at src (+ rmsnorm and gamma with NORM; PLAIN: load_vec).
template <int K, bool NORM, bool PLAIN = false>
__device__ __forceinline__ void load_rows(const Params& p, const Step& st, int task,
                                          const float* src, const __nv_bfloat16* gamma, float* x,
                                          float* red) {
  const unsigned par = st.epoch & 1u;
  if (NORM)
    load_norm<K, PLAIN>(p, src, gamma, x, red, par, task);
  else
    load_vec<K, PLAIN>(p, src, x, par, task);
  mark_loaded();
}

// A weight word of a chunk: from the ring's stage (shared memory), or, without the ring,
// from global memory.
__device__ __forceinline__ uint4 ld_weight(const uint4* w) {
  if constexpr (kRing)
    return *w;
  else
    return ld_stream(w);
}

// The task's weight rows (its stream entries, in order: e.g. gate rows then up rows),
// each dotted with x. Row r's product lands in ypart[s * R + r] for K-slices s < kSplit,
// each written once (no atomics: the sum order, and so the result, is fixed).
template <int K, int R>
__device__ void stream_rows(const Params& p, const long long* rec, int task, const float* x,
                            float* ypart, Ring& ring, int total) {
  using C = Chunking<K>;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const float4* xv = reinterpret_cast<const float4*>(x);
  // A warp's item is one row's K-slice s (rows * kSplit items; with kSplit > 1 there are
  // at most kCWarps, so s = warp % kSplit in every chunk) and a lane takes 8-column groups
  // c = s * kSlice + lane + 32 j: the same x in every row. x is read from shared memory
  // once per task into registers, not once per row (which made a chunk's shared reads 3x
  // its weight bytes), unless the lane's part is too big to hold (kXRegs).
  constexpr int kSlice = (K / 8 + C::kSplit - 1) / C::kSplit, kJ = (kSlice + 31) / 32;
  constexpr bool kXRegs = 8 * kJ <= kXRegFloats;
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
  // The task's `total` rows are split evenly over its stream entries (gate/up: one or
  // two; codegen checks it), so with the ring the consumers need no stream table read:
  // the producer alone walks it.
  const int rows = total / (int)rec[F_NSTREAM];
  for (int e = 0; e < rec[F_NSTREAM]; ++e) {
    const long long off = kRing ? 0 : st[3 * e];
    for (int r0 = 0; r0 < rows; r0 += C::kRows) {
      const int n = min(C::kRows, rows - r0);
      const uint4* chunk;
      unsigned t_c = 0;  // profiled: when the chunk was there
      if constexpr (kRing) {
        const unsigned t_w = kProfile ? (unsigned)global_timer() : 0u;
        if (ok) ok = mbar_wait(ring.full + ring.stage, ring.phase, p, task);
        // Lanes may see a failure at different times: decide as a warp (shuffles follow).
        ok = __all_sync(0xffffffffu, ok);
        if constexpr (kProfile) {
          t_c = (unsigned)global_timer();
          if (threadIdx.x == 0) s_weight_wait_ns += t_c - t_w;
        }
        chunk = reinterpret_cast<const uint4*>(ring.base + ring.stage * kStageBytes);
      } else {
        chunk = reinterpret_cast<const uint4*>(p.w + off + (long long)r0 * K);
      }
      if (ok) {
        for (int item = warp; item < n * C::kSplit; item += kCWarps) {
          const int rr = item / C::kSplit, s = item % C::kSplit;
          const uint4* row = chunk + rr * (K / 8);
          float acc = 0.f;
          if constexpr (kXRegs) {
#pragma unroll
            for (int j = 0; j < kJ; ++j) {
              const int c = c0 + 32 * j;
              if (c < c_end) acc += dot8(ld_weight(row + c), xa[j], xb[j]);
            }
          } else {
#pragma unroll 8
            for (int c = c0; c < c_end; c += 32) {
              const uint4 w = ld_weight(row + c);
              acc += dot8(w, xv[c], xv[K / 8 + c]);
            }
          }
          acc = warp_sum(acc);
          if (lane == 0) ypart[s * R + ybase + r0 + rr] = acc;
        }
      }
      if constexpr (kRing) {
        if constexpr (kProfile)
          if (threadIdx.x == 0) s_chunk_ns += (unsigned)global_timer() - t_c;
        // Every lane arrives: an arrive releases the arriving thread's own reads of the
        // stage, so each lane's reads come before the next bulk copy into it. (One arrive
        // per warp after __syncwarp left racecheck with 5 hazards here; per lane it
        // reports none, at the same step time: bench/NOTES.md, session 2.)
        mbar_arrive(ring.empty + ring.stage);
        ring.advance();
      }
    }
    ybase += rows;
  }
  sync_consumers();
  mark_computed();
}

template <int K, int R>
__device__ __forceinline__ float row_result(const float* ypart, int r) {
  float y = 0.f;
#pragma unroll
  for (int s = 0; s < Chunking<K>::kSplit; ++s) y += ypart[s * R + r];
  return y;
}

}  // namespace tilert
