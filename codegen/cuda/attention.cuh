// The decode attention's building blocks: which cache rows a split takes, RoPE, the
// combine of a kv group's split partials, and the producer's L2 request for a split's
// cache rows. The task itself is tasks/attention_decode.cuh. (The q/k head norm stays
// inline in the task: as a function here, ptxas gave qwen3-8b's kernel 4 registers more.)
// From kernel.cu: kConsumers, kRopeInvFreq, kPartBatch, Params (act).
#pragma once
#include "flags.cuh"
#include "reduce.cuh"

namespace tilert {

// Split s of a decode attention's NSPLIT over the cache rows of earlier steps [0, pos):
// rows [lo, hi) (the last split also takes this step's row).
template <int NSPLIT>
__device__ __forceinline__ void split_rows(int pos, int s, int& lo, int& hi) {
  const int chunk = (pos + NSPLIT - 1) / NSPLIT;
  lo = min(s * chunk, pos);
  hi = min(lo + chunk, pos);
}

// Rotate-half RoPE at position pos of the G q heads (also scaled by 1/sqrt(HD), the
// softmax scale) and of k, in place.
template <int HD, int G>
__device__ __forceinline__ void rope(float* q, float* kn, int pos) {
  const float scale = rsqrtf((float)HD);
  for (int i = threadIdx.x; i < (G + 1) * (HD / 2); i += kConsumers) {
    const int hh = i / (HD / 2), d = i % (HD / 2);
    float* v = hh < G ? q + hh * HD : kn;
    const float ang = (float)pos * kRopeInvFreq[d];
    const float c = cosf(ang), sn = sinf(ang), f = hh < G ? scale : 1.f;
    const float x0 = v[d], x1 = v[d + HD / 2];
    v[d] = (x0 * c - x1 * sn) * f;
    v[d + HD / 2] = (x1 * c + x0 * sn) * f;
  }
  sync_consumers();
}

// Kv group g's output heads [G][HD] at a.out <- its NSPLIT partials [NSPLIT][G][HD + 2]
// (o, max, sum per q head) at a.part, combined, flagged with `par`; `a`: the attention
// task's arguments (read where they are used: a pointer held across the loads costs
// registers). Scratch: ks (the partials), s_w ([NSPLIT][G] split weights), s_sum ([G]).
template <int HD, int G, int NSPLIT>
__device__ __forceinline__ void combine_splits(const Params& p, const AttentionDecodeArgs& a, int g,
                                               float* ks, float* s_w, float* s_sum, unsigned par,
                                               int task) {
  constexpr int kPart = NSPLIT * G * (HD + 2), kPartIt = (kPart + kConsumers - 1) / kConsumers;
  const float* parts = p.act + a.part + (long long)g * kPart;
  // the group's partials: in one batch where 24 registers hold them (llama-3.2-1b,
  // qwen3-0.6b: one L2 round trip on the layer's critical path, not two); else
  // kPartBatch at a time (qwen3-8b spills with two batches of 19; codegen lowers it from
  // 16 where the kernel spills: KernelPlan.part_batch)
  load_fresh<kPartIt, kPartIt <= 24 ? kPartIt : kPartBatch, float>(
      p,
      [&](int it) -> const float* {
        const int i = threadIdx.x + it * kConsumers;
        return i < kPart ? parts + i : nullptr;
      },
      [&](int it, float v) { ks[threadIdx.x + it * kConsumers] = v; }, par, task);
  sync_consumers();
  // Each split's weight exp(max_x - m) per head, once (NSPLIT * G exps, not NSPLIT * G *
  // HD), then each head's sum, in split order as before (the same result to the bit).
  for (int t = threadIdx.x; t < NSPLIT * G; t += kConsumers) {
    const int x = t / G, i = t % G;
    float m = -INFINITY;
    for (int y = 0; y < NSPLIT; ++y) m = fmaxf(m, ks[(y * G + i) * (HD + 2) + HD]);
    s_w[t] = expf(ks[(x * G + i) * (HD + 2) + HD] - m);
  }
  sync_consumers();
  for (int i = threadIdx.x; i < G; i += kConsumers) {
    float l = 0.f;
    for (int x = 0; x < NSPLIT; ++x) l += ks[(x * G + i) * (HD + 2) + HD + 1] * s_w[x * G + i];
    s_sum[i] = l;
  }
  sync_consumers();
  float* out = p.act + a.out + (long long)g * G * HD;
  for (int t = threadIdx.x; t < G * HD; t += kConsumers) {
    const int i = t / HD, d = t % HD;
    float o = 0.f;
    for (int x = 0; x < NSPLIT; ++x) o += ks[(x * G + i) * (HD + 2) + d] * s_w[x * G + i];
    out[i * HD + d] = flagged(o / s_sum[i], par);
  }
}

// Attention's cache rows of earlier steps do not depend on the step: when the producer's
// walk passes a decode attention split (it runs a ring's depth ahead of the consumers)
// it asks L2 for the split's k and v rows, so the split's copies into shared memory
// find them in L2, not in HBM.
template <int HD, int G, int H, int KV, int S, int NSPLIT, int QKN>
__device__ void prefetch_cache_rows(const Params& p, int pos, const AttentionDecodeArgs& a) {
  int lo, hi;
  split_rows<NSPLIT>(pos, (int)a.split, lo, hi);
  for (const long long* cache : {&a.k_cache, &a.v_cache})  // k, then v
    prefetch_l2_range(p.act + *cache + ((long long)a.head * S + lo) * HD, (hi - lo) * HD * 4LL);
}

}  // namespace tilert
