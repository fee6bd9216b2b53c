// sample: the next token from the logits (greedy from the LM head's partials, or drawn
// with temperature, top-k and top-p); runtime/sampling.py has the rules (sample_token) and
// the merge of the partials (fast_draw), which this follows step by step.
// From kernel.cu: kConsumers, kBins, kLogitsOnly, kGreedy, kPartHeader, PartField,
// kSampleList, Params (act, tokens, host_tokens, n_forced, mode, temperature, top_p, top_k,
// seed).
#pragma once
#include "../reduce.cuh"
#include "../ring.cuh"
#include "../sample.cuh"
#include "../task.cuh"

namespace tilert {

// The loops here are kept rolled (#pragma unroll 1): this code is inlined into the one
// kernel, and unrolled it tipped ptxas into spilling the dispatch loop's long-lived values
// (qwen3-8b), though it runs once a step.

// A draw over a range of the logits: tokens [lo, lo + n) with z >= tau, the first whose
// running fixed-point mass (from `before`) exceeds `target` (given, or u times the range's
// kept mass). Thread j owns tokens [j * per, (j + 1) * per), summed in order.
struct RowDraw {
  int lo, n;
  float tau;
  bool given;
  unsigned long long before, target;
};

__device__ int draw_range(const float* lg, const RowDraw& d, float t, float zmax, float u,
                          unsigned long long* sums) {
  __shared__ int s_tok, s_last;
  if (threadIdx.x == 0) s_tok = -1, s_last = -1;
  const int per = (d.n + kConsumers - 1) / kConsumers;
  const int lo = d.lo + min(d.n, (int)threadIdx.x * per), hi = min(d.lo + d.n, lo + per);
  unsigned long long mine = 0;
  int last = -1;
#pragma unroll 1
  for (int i = lo; i < hi; ++i) {
    const float z = ld_act(lg + i) / t;
    const unsigned long long m = z >= d.tau ? fixed_mass(z, zmax) : 0ull;
    mine += m;
    if (m > 0) last = i;
  }
  sums[threadIdx.x] = mine;
  sync_consumers();
  if (last >= 0) atomicMax(&s_last, last);
  unsigned long long before = 0, total = 0;
#pragma unroll 1
  for (int j = 0; j < kConsumers; ++j) {
    if (j == (int)threadIdx.x) before = total;
    total += sums[j];
  }
  const unsigned long long target =
      d.given ? d.target : (unsigned long long)((double)u * (double)total);
  before += d.before;
  if (before <= target && target < before + mine) {  // one thread (but for rounding: none)
    unsigned long long run = before;
#pragma unroll 1
    for (int i = lo; i < hi; ++i) {
      const float z = ld_act(lg + i) / t;
      if (z < d.tau) continue;
      run += fixed_mass(z, zmax);
      if (run > target) {
        s_tok = i;
        break;
      }
    }
  }
  sync_consumers();
  return s_tok >= 0 ? s_tok : s_last;  // none: the target rounded past the range's mass
}

// Temperature alone: every token is kept. The partials' masses (SUMEXP scaled to the
// largest z, fixed point) say which task's rows hold the draw: the range to draw from.
// tm: [P].
template <int C>
__device__ void rows_of_draw(const float* parts, int n_parts, float zmax, const float* zb,
                             float u, unsigned long long* tm, RowDraw& d) {
  constexpr int kStride = kPartHeader + 2 * C;
#pragma unroll 1
  for (int j = threadIdx.x; j < n_parts; j += kConsumers)
    tm[j] = (unsigned long long)((double)ld_act(parts + j * kStride + P_SUMEXP) *
                                 (double)expf(zb[j] - zmax) * 4294967296.0);
  sync_consumers();
  if (threadIdx.x == 0) {  // the task whose running mass first exceeds u * total
    unsigned long long total = 0, run = 0;
#pragma unroll 1
    for (int j = 0; j < n_parts; ++j) total += tm[j];
    const unsigned long long target = (unsigned long long)((double)u * (double)total);
    int j = 0;
#pragma unroll 1
    for (; j < n_parts - 1 && run + tm[j] <= target; ++j) run += tm[j];
    const float* h = parts + j * kStride;
    d = RowDraw{(int)ld_act(h + P_ROW0), (int)ld_act(h + P_ROWS), -INFINITY, true, run, target};
  }
  sync_consumers();
}

// The top-k and top-p thresholds by radix selects over every z = logit / T (where the
// partials do not settle the draw); the draw then passes over the whole vocabulary.
template <int V>
__device__ float pass_threshold(const Params& p, const float* lg, float zmax, float* smem) {
  unsigned long long* hist = reinterpret_cast<unsigned long long*>(smem);  // [kBins]
  static_assert(2 * kBins + 2 * kConsumers <= kScratchFloats, "codegen's scratch_floats");
  const float t = p.temperature;
  const auto z_of = [&](int i) { return ld_act(lg + i) / t; };
  float tau = -INFINITY;
  if (p.top_k > 0 && p.top_k < V)
    tau = select_threshold<false>(V, z_of, zmax, tau, (unsigned long long)p.top_k, hist);
  if (p.top_p < 1.f) {
    unsigned long long z_sum = 0;  // the kept mass so far, every thread's share
#pragma unroll 1
    for (int i = threadIdx.x; i < V; i += kConsumers) {
      const float z = z_of(i);
      if (z >= tau) z_sum += fixed_mass(z, zmax);
    }
    const unsigned long long total = block_total(z_sum);
    const unsigned long long target = (unsigned long long)((double)p.top_p * (double)total);
    tau = select_threshold<true>(V, z_of, zmax, tau, max(target, 1ull), hist);
  }
  return tau;
}

// The draw from the LM head's partials (runtime/sampling.py fast_draw), or -1 where they do
// not settle it; with temperature alone, -1 and `rows`: d is the task's rows to draw from. `best`: the largest logit. smem: the task's scratch (codegen's
// scratch_floats: SAMPLE_LIST gathered candidates, then per-partial and per-consumer words).
template <int V, int C, int P>
__device__ int fast_draw(const Params& p, const Step& st, const float* parts, int n_parts,
                         float best, float* smem, float* red, RowDraw& d, bool& rows) {
  constexpr int kStride = kPartHeader + 2 * C, kL = kSampleList;
  unsigned long long* lm = reinterpret_cast<unsigned long long*>(smem);  // [kL] masses
  unsigned long long* tm = lm + kL;                                       // [P]
  float* lz = reinterpret_cast<float*>(tm + P);                           // [kL] z
  int* li = reinterpret_cast<int*>(lz + kL);                              // [kL] indices
  float* zb = reinterpret_cast<float*>(li + kL);                          // [P] task maxima z
  int* cnt = reinterpret_cast<int*>(zb + P);                              // [P] candidates
  static_assert(4 * kL + 4 * P <= kScratchFloats, "codegen's scratch_floats");
  const float t = p.temperature, zmax = best / t;
  float low = INFINITY, bmax = -INFINITY;
#pragma unroll 1
  for (int j = threadIdx.x; j < n_parts; j += kConsumers) {
    const float* h = parts + j * kStride;
    low = fminf(low, ld_act(h + P_LOW));
    bmax = fmaxf(bmax, ld_act(h + P_BOUND));
    zb[j] = ld_act(h + P_BEST) / t;
    cnt[j] = (int)ld_act(h + P_COUNT);
  }
  low = -block_max(-low, red);  // its barriers publish zb and cnt
  bmax = block_max(bmax, red);
  if (!isfinite(zmax) || !isfinite(low / t)) return -1;  // sample_token's greedy rule
  const float u = uniform(p.seed, st.pos), bz = bmax / t;
  const bool k_on = p.top_k > 0 && p.top_k < V, p_on = p.top_p < 1.f;
  rows = !k_on && !p_on;
  if (rows) {
    rows_of_draw<C>(parts, n_parts, zmax, zb, u, tm, d);
    return -1;
  }
  // Gather the candidates with z > bz (the candidates hold every such token), with top-k
  // only those at or above the k-th largest task maximum (k tokens reach it).
  const float lo = k_on && p.top_k <= n_parts ? kth_largest(zb, n_parts, p.top_k) : -INFINITY;
  __shared__ int s_n;
  if (threadIdx.x == 0) s_n = 0;
  sync_consumers();
  const int slots = n_parts * C;
  constexpr int kBatch = 4;  // loads in flight per thread (8 made ptxas spill on qwen3-8b)
#pragma unroll 1
  for (int e0 = threadIdx.x; e0 < slots; e0 += kBatch * kConsumers) {
    float v[kBatch];
#pragma unroll
    for (int q = 0; q < kBatch; ++q) {
      const int e = e0 + q * kConsumers, j = e / C, i = e - j * C;
      v[q] = e < slots && i < cnt[j] ? ld_act(parts + j * kStride + kPartHeader + 2 * i) : NAN;
    }
#pragma unroll
    for (int q = 0; q < kBatch; ++q) {
      const float z = v[q] / t;
      if (z > bz && z >= lo) {
        const int e = e0 + q * kConsumers, j = e / C, i = e - j * C;
        const int k = atomicAdd(&s_n, 1);
        if (k < kL)
          lz[k] = z, li[k] = (int)ld_act(parts + j * kStride + kPartHeader + 2 * i + 1),
          lm[k] = fixed_mass(z, zmax);
      }
    }
  }
  sync_consumers();
  const int n = s_n;
  if (n > kL || (k_on && n < p.top_k)) return -1;
  float tau = k_on ? kth_largest(lz, n, p.top_k) : -INFINITY;
  if (p_on) {
    // The kept mass: the gathered ones at or above tau when they are all the kept tokens
    // (top-k, or every row a candidate); else the whole vocabulary's, from the partials.
    const bool exact = k_on || bz == -INFINITY;
    unsigned long long total;
    if (exact) {
      unsigned long long mine = 0;
#pragma unroll 1
      for (int i = threadIdx.x; i < n; i += kConsumers)
        if (lz[i] >= tau) mine += lm[i];
      total = block_total(mine);
    } else {
      unsigned long long mine = 0;  // fixed point, as rows_of_draw's
#pragma unroll 1
      for (int j = threadIdx.x; j < n_parts; j += kConsumers)
        mine += (unsigned long long)((double)ld_act(parts + j * kStride + P_SUMEXP) *
                                     (double)expf(zb[j] - zmax) * 4294967296.0);
      total = block_total(mine);
    }
    const unsigned long long target = (unsigned long long)((double)p.top_p * (double)total);
    // tau_p: the largest z whose mass at or above it reaches target
    float tp = -INFINITY, least = INFINITY;
#pragma unroll 1
    for (int i = threadIdx.x; i < n; i += kConsumers) {
      const float zi = lz[i];
      if (zi < tau) continue;
      least = fminf(least, zi);
      unsigned long long incl = 0;
#pragma unroll 1
      for (int j = 0; j < n; ++j)
        if (lz[j] >= zi && lz[j] >= tau) incl += lm[j];
      if (incl >= max(target, 1ull)) tp = fmaxf(tp, zi);
    }
    tp = block_max(tp, red);
    least = -block_max(-least, red);
    if (tp == -INFINITY) {
      if (!exact) return -1;  // the nucleus reaches past the candidates
      tp = least;             // rounding: every gathered token is kept
    }
    tau = fmaxf(tau, tp);
  }
  // The draw: the first kept index, in vocabulary order, where the running mass exceeds
  // u * total; each kept candidate sums the kept mass of the lower indices.
  unsigned long long mine = 0;
#pragma unroll 1
  for (int i = threadIdx.x; i < n; i += kConsumers)
    if (lz[i] >= tau) mine += lm[i];
  const unsigned long long total = block_total(mine);
  const unsigned long long target = (unsigned long long)((double)u * (double)total);
  __shared__ int s_tok;
  if (threadIdx.x == 0) s_tok = -1;
  sync_consumers();
#pragma unroll 1
  for (int i = threadIdx.x; i < n; i += kConsumers) {
    if (lz[i] < tau || lm[i] == 0) continue;
    unsigned long long before = 0;
#pragma unroll 1
    for (int j = 0; j < n; ++j)
      if (lz[j] >= tau && li[j] < li[i]) before += lm[j];
    if (before <= target && target < before + lm[i]) s_tok = li[i];  // exactly one
  }
  sync_consumers();
  return s_tok;
}

// sample: the next token from the logits, written to the act arena (as a float), to
// tokens[i + 1] and to the host's mapped buffer. Skipped while the prompt is being fed.
template <int V, int C, int P>
__device__ void task_sample(const Params& p, const Step& st, const SampleArgs& a,
                            const long long*, int, float* smem, float* red, Ring&) {
  if (p.mode == kLogitsOnly || st.i + 1 < p.n_forced) return;
  constexpr int kStride = kPartHeader + 2 * C;
  __shared__ int s_token;
  const float* lg = p.act + a.logits;
  float best = -INFINITY;  // the largest logit and its first index, from the LM head's
  int at = 0x7fffffff;     // partials
  const float* parts = p.act + a.parts;
  for (int j = threadIdx.x; j < a.n_parts; j += kConsumers) {
    const float v = ld_act(parts + j * kStride + P_BEST);
    const int i = (int)ld_act(parts + j * kStride + P_AT);
    if (v > best || (v == best && i < at)) best = v, at = i;
  }
  block_argmax(best, at);
  if (p.mode == kGreedy) {
    if (threadIdx.x == 0) s_token = at;
  } else {
    __shared__ RowDraw s_draw;
    bool rows = false;
    int tok = fast_draw<V, C, P>(p, st, parts, (int)a.n_parts, best, smem, red, s_draw, rows);
    if (tok < 0) {
      const float t = p.temperature, zmax = best / t;
      if (!rows) {  // the partials do not settle it: passes over the whole vocabulary
        const float tau = pass_threshold<V>(p, lg, zmax, smem);
        if (threadIdx.x == 0) s_draw = RowDraw{0, V, tau, false, 0ull, 0ull};
        sync_consumers();
      }
      const RowDraw d = s_draw;
      // the per-consumer sums after the histogram (the pass) or the gathered masses
      auto* sums = reinterpret_cast<unsigned long long*>(smem) + max(kBins, kSampleList);
      tok = draw_range(lg, d, t, zmax, uniform(p.seed, st.pos), sums);
    }
    if (threadIdx.x == 0) s_token = tok;
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
