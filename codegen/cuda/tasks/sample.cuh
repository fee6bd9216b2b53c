// sample: the next token from the logits (greedy from the LM head's argmax partials, or
// drawn with temperature, top-k and top-p); runtime/sampling.py has the rules.
// From kernel.cu: kConsumers, kBins, kLogitsOnly, kGreedy, Params (act, tokens, host_tokens,
// n_forced, mode, temperature, top_p, top_k, seed).
#pragma once
#include "../reduce.cuh"
#include "../ring.cuh"
#include "../sample.cuh"
#include "../task.cuh"

namespace tilert {

// sample: the next token from the logits, written to the act arena (as a float), to
// tokens[i + 1] and to the host's mapped buffer. Skipped while the prompt is being fed.
template <int V>
__device__ void task_sample(const Params& p, const Step& st, const SampleArgs& a,
                            const long long*, int, float* smem, float*, Ring&) {
  if (p.mode == kLogitsOnly || st.i + 1 < p.n_forced) return;
  __shared__ int s_token;
  const float* lg = p.act + a.logits;
  float best = -INFINITY;  // the largest logit and its first index, from the LM head's
  int at = 0x7fffffff;     // partials
  const float* parts = p.act + a.parts;
  for (int j = threadIdx.x; j < a.n_parts; j += kConsumers) {
    const float v = ld_act(parts + 2 * j);
    const int i = (int)ld_act(parts + 2 * j + 1);
    if (v > best || (v == best && i < at)) best = v, at = i;
  }
  block_argmax(best, at);
  if (p.mode == kGreedy) {
    if (threadIdx.x == 0) s_token = at;
  } else {
    unsigned long long* hist = reinterpret_cast<unsigned long long*>(smem);  // [kBins]
    unsigned long long* sums = hist + kBins;                                 // [kConsumers]
    static_assert(2 * kBins + 2 * kConsumers <= kScratchFloats, "codegen's scratch_floats");
    const float t = p.temperature, zmax = best / t;
    float tau = -INFINITY;
    if (p.top_k > 0 && p.top_k < V)
      tau = select_threshold<V, false>(lg, t, zmax, tau, (unsigned long long)p.top_k, hist);
    if (p.top_p < 1.f) {
      unsigned long long z_sum = 0;  // the kept mass so far, every thread's share
      for (int i = threadIdx.x; i < V; i += kConsumers) {
        const float z = ld_act(lg + i) / t;
        if (z >= tau) z_sum += fixed_mass(z, zmax);
      }
      sums[threadIdx.x] = z_sum;
      sync_consumers();
      unsigned long long total = 0;
      for (int j = 0; j < kConsumers; ++j) total += sums[j];
      sync_consumers();
      const unsigned long long target = (unsigned long long)((double)p.top_p * (double)total);
      tau = select_threshold<V, true>(lg, t, zmax, tau, max(target, 1ull), hist);
    }
    // The draw: thread j owns tokens [j * per, (j + 1) * per), summed in order.
    constexpr int kPer = (V + kConsumers - 1) / kConsumers;
    const int lo = threadIdx.x * kPer, hi = min(V, lo + kPer);
    unsigned long long mine = 0;
    for (int i = lo; i < hi; ++i) {
      const float z = ld_act(lg + i) / t;
      if (z >= tau) mine += fixed_mass(z, zmax);
    }
    sums[threadIdx.x] = mine;
    sync_consumers();
    unsigned long long before = 0, total = 0;
    for (int j = 0; j < kConsumers; ++j) {
      if (j == (int)threadIdx.x) before = total;
      total += sums[j];
    }
    const unsigned long long target =
        (unsigned long long)((double)uniform(p.seed, st.pos) * (double)total);
    if (before <= target && target < before + mine) {  // exactly one thread
      unsigned long long run = before;
      int tok = hi - 1;
      for (int i = lo; i < hi; ++i) {
        const float z = ld_act(lg + i) / t;
        if (z < tau) continue;
        run += fixed_mass(z, zmax);
        if (run > target) {
          tok = i;
          break;
        }
      }
      s_token = tok;
    }
  }
  sync_consumers();
  if (threadIdx.x == 0) {
    const int tok = s_token;
    p.act[a.out] = (float)tok;
    if (p.tokens) p.tokens[st.i + 1] = tok;
    if (p.host_tokens) {  // the host counts drawn tokens: the first is step n_forced - 1's
      *reinterpret_cast<volatile int*>(p.host_tokens + st.i + 1 - p.n_forced) = tok;
      __threadfence_system();
    }
  }
}

}  // namespace tilert
