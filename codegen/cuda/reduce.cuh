// Reductions over a warp and over the consumer warps.
// From kernel.cu: kCWarps (sync_consumers: kConsumers).
#pragma once
#include "memory.cuh"

namespace tilert {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Every consumer thread gets the sum over all consumers. `red` holds kCWarps floats.
__device__ __forceinline__ float block_sum(float v, float* red) {
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  sync_consumers();
  float t = 0.f;
#pragma unroll
  for (int w = 0; w < kCWarps; ++w) t += red[w];
  sync_consumers();
  return t;
}

// Every consumer thread gets the largest value over all consumers. `red`: kCWarps floats.
__device__ __forceinline__ float block_max(float v, float* red) {
  v = warp_max(v);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  sync_consumers();
  float m = red[0];
#pragma unroll
  for (int w = 1; w < kCWarps; ++w) m = fmaxf(m, red[w]);
  sync_consumers();
  return m;
}
// The sum of an integer (or double) over all consumers, which every thread gets; integer
// sums do not depend on the order of the additions.
template <class T>
__device__ T block_total(T v) {
  __shared__ T s_part[kCWarps];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) s_part[threadIdx.x >> 5] = v;
  sync_consumers();
  T t = 0;
#pragma unroll
  for (int w = 0; w < kCWarps; ++w) t += s_part[w];
  sync_consumers();
  return t;
}

// (largest value, its lowest index) over the consumers; every thread gets the result.
__device__ void block_argmax(float& best, int& at) {
  __shared__ float s_v[kCWarps];
  __shared__ int s_i[kCWarps];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, at, o);
    if (ov > best || (ov == best && oi < at)) best = ov, at = oi;
  }
  if ((threadIdx.x & 31) == 0) s_v[threadIdx.x >> 5] = best, s_i[threadIdx.x >> 5] = at;
  sync_consumers();
  best = s_v[0];
  at = s_i[0];
  for (int w = 1; w < kCWarps; ++w)
    if (s_v[w] > best || (s_v[w] == best && s_i[w] < at)) best = s_v[w], at = s_i[w];
  sync_consumers();
}

}  // namespace tilert
