// Sampling's building blocks: order-preserving keys, fixed-point mass, the seeded uniform
// draw, and the radix select of a top-k / top-p threshold. The task is tasks/sample.cuh.
// From kernel.cu: kConsumers, kBins.
#pragma once
#include "memory.cuh"

namespace tilert {

// runtime/sampling.py defines the rules; this is the same algorithm on one CTA. Greedy is
// one argmax pass. Sampling: z = logits / T; the top-k and top-p thresholds come from a
// radix select over order-preserving keys of z (digits of 11, 11 and 10 bits, a 2048-bin
// histogram in shared memory, integer sums so the result does not depend on the order of
// the atomics); then an inverse-CDF draw in vocabulary order with u = uniform(seed, pos).
__device__ __forceinline__ unsigned order_key(float z) {  // larger z, larger key
  const unsigned b = __float_as_uint(z);
  return (b & 0x80000000u) ? ~b : b | 0x80000000u;
}
__device__ __forceinline__ float key_float(unsigned k) {
  return __uint_as_float((k & 0x80000000u) ? k & 0x7fffffffu : ~k);
}
// exp(z - zmax) in [0, 1] as 32.32 fixed point: sums of up to 2^31 of them fit 64 bits.
__device__ __forceinline__ unsigned long long fixed_mass(float z, float zmax) {
  return (unsigned long long)(expf(z - zmax) * 4294967296.f);
}
__device__ __forceinline__ unsigned long long splitmix64(unsigned long long x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
__device__ __forceinline__ float uniform(unsigned long long seed, int pos) {
  const unsigned long long h = splitmix64(splitmix64(seed) ^ (unsigned long long)(long long)pos);
  return (float)(h >> 40) * 0x1p-24f;
}

// The smallest kept z: among the n values z_of(i) with z >= lo, in descending order, the one
// where the running total (count, or fixed-point mass with MASS) first reaches `target`.
// `reached`: whether they reach it at all (otherwise the smallest of them is returned).
// Count: unsigned (counts only: native shared atomics) or unsigned long long.
template <bool MASS, class Count, class Z>
__device__ float select_threshold(int n, const Z& z_of, float zmax, float lo, Count target,
                                  Count* hist, bool* reached = nullptr) {
  static_assert(!MASS || sizeof(Count) == 8, "masses need 64-bit sums");
  __shared__ unsigned s_prefix;
  __shared__ Count s_above;
  __shared__ bool s_reached;
  if (threadIdx.x == 0) s_prefix = 0, s_above = 0;
  int known = 0;  // key bits fixed so far, from the top
  for (int r = 0; r < 3; ++r) {
    const int bits = r < 2 ? 11 : 10, shift = 32 - known - bits;
    for (int b = threadIdx.x; b < kBins; b += kConsumers) hist[b] = 0;
    sync_consumers();
    const unsigned prefix = s_prefix;
    for (int i = threadIdx.x; i < n; i += kConsumers) {
      const float z = z_of(i);
      if (!(z >= lo)) continue;
      const unsigned k = order_key(z);
      if (known && (k >> (32 - known)) != prefix) continue;
      atomicAdd(hist + ((k >> shift) & ((1u << bits) - 1)), MASS ? (Count)fixed_mass(z, zmax) : (Count)1);
    }
    sync_consumers();
    if (threadIdx.x < 32) {  // warp 0: the bin where the total from the top reaches target
      const int lane = threadIdx.x, per = (1 << bits) / 32;
      Count mine = 0;
      for (int j = 0; j < per; ++j) mine += hist[lane * per + j];
      Count incl = mine;  // this lane's bins and every higher lane's
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const Count v = __shfl_down_sync(0xffffffffu, incl, o);
        if (lane + o < 32) incl += v;
      }
      const Count above = s_above, total = __shfl_sync(0xffffffffu, incl, 0);
      if (r == 0 && lane == 0) s_reached = total >= target;
      // Rounding can leave the candidates short of target: then every candidate is kept.
      const Count want = min(target, above + total);
      const unsigned hit = __ballot_sync(0xffffffffu, above + incl - mine < want &&
                                                          above + incl >= want && mine > 0);
      const int owner = 31 - __clz(hit);  // the highest such lane (lower ones have mine 0)
      if (lane == owner) {
        Count acc = above + incl - mine;
        int b = lane * per + per - 1;
        for (; b > lane * per; --b) {
          if (acc + hist[b] >= want && hist[b] > 0) break;
          acc += hist[b];
        }
        s_prefix = (prefix << bits) | (unsigned)b;
        s_above = acc;
      }
    }
    sync_consumers();
    known += bits;
  }
  if (reached) *reached = s_reached;
  return key_float(s_prefix);
}

// The k-th largest of z[0:n) in shared memory (1 <= k <= n; ties counted): each value's
// rank by comparing it with all, n^2 / kConsumers reads of a broadcast word.
__device__ float kth_largest(const float* z, int n, int k) {
  __shared__ float s_kth;
  for (int i = threadIdx.x; i < n; i += kConsumers) {
    const float zi = z[i];
    int gt = 0, ge = 0;
    for (int j = 0; j < n; ++j) gt += z[j] > zi, ge += z[j] >= zi;
    if (gt < k && k <= ge) s_kth = zi;  // every such i holds the same value
  }
  sync_consumers();
  const float v = s_kth;
  sync_consumers();
  return v;
}

}  // namespace tilert
