// The prefill program's row-wise kernels (ir/prefill.py KINDS): embedding, residual add
// + RMSNorm, and the q/k head norm + RoPE + KV-cache write. One block per chunk row, 256
// threads; every kernel reads pos, n and the chunk's first token from meta[0..2] and
// leaves rows r >= n alone. Plain C++: the generated prefill.cu instantiates them with
// the model's shapes (codegen/prefill.py) beside the TileLang GEMM and attention kernels.
#pragma once
#include <cuda_bf16.h>

namespace tilert::prefill {

constexpr int kThreads = 256;

__device__ __forceinline__ float block_sum(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float s = 0.f;
  for (int w = 0; w < kThreads / 32; ++w) s += red[w];
  __syncthreads();
  return s;
}

// x[r, :] = float(table[tokens[first + r], :])
template <int D>
__device__ void embed(const int* tokens, const __nv_bfloat16* table, float* x, const int* meta) {
  const int r = blockIdx.x;
  if (r >= meta[1]) return;
  const long tok = tokens[meta[2] + r];
  for (int d = threadIdx.x; d < D; d += kThreads) x[(long)r * D + d] = __bfloat162float(table[tok * D + d]);
}

// x[r] += y[r] (y may be null); out[r] = bf16(x[r] / rms(x[r]) * w)
template <int D>
__device__ void add_norm(float* x, const float* y, const __nv_bfloat16* w, __nv_bfloat16* out,
                         const int* meta, float eps) {
  __shared__ float red[kThreads / 32];
  const int r = blockIdx.x;
  if (r >= meta[1]) return;
  float* xr = x + (long)r * D;
  float ss = 0.f;
  for (int d = threadIdx.x; d < D; d += kThreads) {
    float v = xr[d];
    if (y != nullptr) {
      v += y[(long)r * D + d];
      xr[d] = v;
    }
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss, red) / D + eps);
  for (int d = threadIdx.x; d < D; d += kThreads)
    out[(long)r * D + d] = __float2bfloat16(xr[d] * inv * __bfloat162float(w[d]));
}

// Row r of qkv [H + 2 KV heads of HD]: q and k heads RMS-normed over HD (QK_NORM) and
// rotated (rotate-half RoPE at position pos + r), q to q[r] as bf16, k and v to the cache
// rows [kv head, pos + r, :]. A warp per head, a lane per RoPE pair (i, i + HD/2).
template <int H, int KV, int HD, int S, bool QK_NORM>
__device__ void qk_cache(const float* qkv, const __nv_bfloat16* qn, const __nv_bfloat16* kn,
                         __nv_bfloat16* q, float* kc, float* vc, const float* inv_freq,
                         const int* meta, float eps) {
  static_assert(HD % 2 == 0, "RoPE pairs need an even head_dim");
  constexpr int HALF = HD / 2;
  const int r = blockIdx.x;
  if (r >= meta[1]) return;
  const int p = meta[0] + r;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float* row = qkv + (long)r * (H + 2 * KV) * HD;
  for (int h = warp; h < H + 2 * KV; h += kThreads / 32) {
    const float* x = row + h * HD;
    if (h >= H + KV) {  // v head: straight into the cache
      for (int i = lane; i < HD; i += 32) vc[((long)(h - H - KV) * S + p) * HD + i] = x[i];
      continue;
    }
    float inv = 1.f;
    const __nv_bfloat16* w = h < H ? qn : kn;
    if (QK_NORM) {
      float ss = 0.f;
      for (int i = lane; i < HD; i += 32) ss += x[i] * x[i];
      for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
      inv = rsqrtf(ss / HD + eps);
    }
    for (int i = lane; i < HALF; i += 32) {
      float a = x[i] * inv, b = x[i + HALF] * inv;
      if (QK_NORM) {
        a *= __bfloat162float(w[i]);
        b *= __bfloat162float(w[i + HALF]);
      }
      float s, c;
      sincosf((float)p * inv_freq[i], &s, &c);
      const float lo = a * c - b * s, hi = b * c + a * s;
      if (h < H) {
        q[((long)r * H + h) * HD + i] = __float2bfloat16(lo);
        q[((long)r * H + h) * HD + i + HALF] = __float2bfloat16(hi);
      } else {
        kc[((long)(h - H) * S + p) * HD + i] = lo;
        kc[((long)(h - H) * S + p) * HD + i + HALF] = hi;
      }
    }
  }
}

}  // namespace tilert::prefill
