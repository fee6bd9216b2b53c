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

// Temperature alone: every token is kept. The partials' masses (SUMEXP scaled to the
// largest z) say which task's rows hold the draw; only those rows are read. tm: [P] doubles,
// sums: [kConsumers] doubles.
template <int V, int C>
__device__ int draw_rows(const float* parts, int n_parts, const float* lg, float t, float zmax,
                         const float* zb, float u, double* tm, double* sums) {
  constexpr int kStride = kPartHeader + 2 * C;
  __shared__ int s_j, s_tok, s_last;
  __shared__ double s_before, s_target;
  for (int j = threadIdx.x; j < n_parts; j += kConsumers)
    tm[j] = (double)ld_act(parts + j * kStride + P_SUMEXP) * (double)expf(zb[j] - zmax);
  sync_consumers();
  if (threadIdx.x < 32) {  // warp 0: the task whose running mass first exceeds u * total
    const int lane = threadIdx.x, per = (n_parts + 31) / 32, lo = lane * per;
    const int hi = min(n_parts, lo + per);
    double mine = 0.0;
    for (int j = lo; j < hi; ++j) mine += tm[j];
    double incl = mine;  // this lane's tasks and every lower lane's
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const double v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    const double total = __shfl_sync(0xffffffffu, incl, 31), target = (double)u * total;
    const unsigned hit = __ballot_sync(0xffffffffu, incl > target && mine > 0.0);
    if (hit && lane == __ffs(hit) - 1) {
      double run = incl - mine;
      int j = hi - 1;
      for (int q = lo; q < hi; ++q) {
        if (run + tm[q] > target) {
          j = q;
          break;
        }
        run += tm[q];
      }
      s_j = j, s_before = run;
    }
    if (!hit && lane == 0) s_j = n_parts - 1, s_before = total - tm[n_parts - 1];  // rounding
    if (lane == 0) s_target = target, s_tok = -1, s_last = -1;
  }
  sync_consumers();
  const float* h = parts + s_j * kStride;
  const int row0 = (int)ld_act(h + P_ROW0), rows = (int)ld_act(h + P_ROWS);
  const double target = s_target;
  // thread j owns rows [j * per, (j + 1) * per) of the task, summed in order
  const int per = (rows + kConsumers - 1) / kConsumers;
  const int lo = row0 + min(rows, (int)threadIdx.x * per), hi = min(row0 + rows, lo + per);
  double mine = 0.0;
  int last = -1;
  for (int i = lo; i < hi; ++i) {
    const float m = expf(ld_act(lg + i) / t - zmax);
    mine += m;
    if (m > 0.f) last = i;
  }
  sums[threadIdx.x] = mine;
  if (last >= 0) atomicMax(&s_last, last);
  sync_consumers();
  double before = s_before;
  for (int j = 0; j < (int)threadIdx.x; ++j) before += sums[j];
  if (before <= target && target < before + mine) {  // one thread, but for rounding
    double run = before;
    for (int i = lo; i < hi; ++i) {
      run += expf(ld_act(lg + i) / t - zmax);
      if (run > target) {
        atomicMax(&s_tok, i);
        break;
      }
    }
  }
  sync_consumers();
  return s_tok >= 0 ? s_tok : s_last;  // none: u * total rounded past the task's rows
}

// The draw by passes over the whole vocabulary (where the partials do not settle it):
// z = logits / T; the top-k and top-p thresholds by radix selects over every z, then an
// inverse-CDF draw in vocabulary order. Every thread gets the token.
template <int V>
__device__ int draw_pass(const Params& p, const Step& st, const float* lg, float best,
                         float* smem) {
  __shared__ int s_tok;
  unsigned long long* hist = reinterpret_cast<unsigned long long*>(smem);  // [kBins]
  unsigned long long* sums = hist + kBins;                                 // [kConsumers]
  static_assert(2 * kBins + 2 * kConsumers <= kScratchFloats, "codegen's scratch_floats");
  const float t = p.temperature, zmax = best / t;
  const auto z_of = [&](int i) { return ld_act(lg + i) / t; };
  float tau = -INFINITY;
  if (p.top_k > 0 && p.top_k < V)
    tau = select_threshold<false>(V, z_of, zmax, tau, (unsigned long long)p.top_k, hist);
  if (p.top_p < 1.f) {
    unsigned long long z_sum = 0;  // the kept mass so far, every thread's share
    for (int i = threadIdx.x; i < V; i += kConsumers) {
      const float z = z_of(i);
      if (z >= tau) z_sum += fixed_mass(z, zmax);
    }
    const unsigned long long total = block_total(z_sum);
    const unsigned long long target = (unsigned long long)((double)p.top_p * (double)total);
    tau = select_threshold<true>(V, z_of, zmax, tau, max(target, 1ull), hist);
  }
  // The draw: thread j owns tokens [j * per, (j + 1) * per), summed in order.
  constexpr int kPer = (V + kConsumers - 1) / kConsumers;
  const int lo = threadIdx.x * kPer, hi = min(V, lo + kPer);
  unsigned long long mine = 0;
  for (int i = lo; i < hi; ++i) {
    const float z = z_of(i);
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
      const float z = z_of(i);
      if (z < tau) continue;
      run += fixed_mass(z, zmax);
      if (run > target) {
        tok = i;
        break;
      }
    }
    s_tok = tok;
  }
  sync_consumers();
  const int tok = s_tok;
  sync_consumers();
  return tok;
}

// The draw from the LM head's partials (runtime/sampling.py fast_draw), or -1 where they do
// not settle it. `best`: the largest logit. smem: the task's scratch (codegen's
// scratch_floats: SAMPLE_LIST gathered candidates, then per-partial and per-consumer words).
template <int V, int C, int P>
__device__ int fast_draw(const Params& p, const Step& st, const float* parts, int n_parts,
                         const float* lg, float best, float* smem, float* red) {
  constexpr int kStride = kPartHeader + 2 * C, kL = kSampleList;
  unsigned long long* lm = reinterpret_cast<unsigned long long*>(smem);  // [kL] masses
  double* sums = reinterpret_cast<double*>(lm + kL);                      // [kConsumers]
  double* tm = sums + kConsumers;                                         // [P]
  float* lz = reinterpret_cast<float*>(tm + P);                           // [kL] z
  int* li = reinterpret_cast<int*>(lz + kL);                              // [kL] indices
  float* zb = reinterpret_cast<float*>(li + kL);                          // [P] task maxima z
  int* cnt = reinterpret_cast<int*>(zb + P);                              // [P] candidates
  static_assert(4 * kL + 2 * kConsumers + 4 * P <= kScratchFloats, "codegen's scratch_floats");
  const float t = p.temperature, zmax = best / t;
  float low = INFINITY, bmax = -INFINITY;
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
  if (!k_on && !p_on) return draw_rows<V, C>(parts, n_parts, lg, t, zmax, zb, u, tm, sums);
  // Gather the candidates with z > bz (the candidates hold every such token), with top-k
  // only those at or above the k-th largest task maximum (k tokens reach it).
  const float lo = k_on && p.top_k <= n_parts ? kth_largest(zb, n_parts, p.top_k) : -INFINITY;
  __shared__ int s_n;
  if (threadIdx.x == 0) s_n = 0;
  sync_consumers();
  constexpr int kBatch = 8;  // loads in flight per thread
  const int slots = n_parts * C;
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
        const int k = atomicAdd(&s_n, 1);
        if (k < kL) {
          const int e = e0 + q * kConsumers, j = e / C, i = e - j * C;
          lz[k] = z;
          li[k] = (int)ld_act(parts + j * kStride + kPartHeader + 2 * i + 1);
          lm[k] = fixed_mass(z, zmax);
        }
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
      for (int i = threadIdx.x; i < n; i += kConsumers)
        if (lz[i] >= tau) mine += lm[i];
      total = block_total(mine);
    } else {
      double mine = 0.0;
      for (int j = threadIdx.x; j < n_parts; j += kConsumers)
        mine += (double)ld_act(parts + j * kStride + P_SUMEXP) * (double)expf(zb[j] - zmax);
      total = (unsigned long long)(block_total(mine) * 4294967296.0);
    }
    const unsigned long long target = (unsigned long long)((double)p.top_p * (double)total);
    // tau_p: the largest z whose mass at or above it reaches target
    float tp = -INFINITY, least = INFINITY;
    for (int i = threadIdx.x; i < n; i += kConsumers) {
      const float zi = lz[i];
      if (zi < tau) continue;
      least = fminf(least, zi);
      unsigned long long incl = 0;
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
  for (int i = threadIdx.x; i < n; i += kConsumers)
    if (lz[i] >= tau) mine += lm[i];
  const unsigned long long total = block_total(mine);
  const unsigned long long target = (unsigned long long)((double)u * (double)total);
  __shared__ int s_tok;
  if (threadIdx.x == 0) s_tok = -1;
  sync_consumers();
  for (int i = threadIdx.x; i < n; i += kConsumers) {
    if (lz[i] < tau || lm[i] == 0) continue;
    unsigned long long before = 0;
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
    const int tok = fast_draw<V, C, P>(p, st, parts, (int)a.n_parts, lg, best, smem, red);
    if (tok >= 0) {
      if (threadIdx.x == 0) s_token = tok;
    } else {  // the partials do not settle it: passes over the whole vocabulary
      const int tok = draw_pass<V>(p, st, lg, best, smem);
      if (threadIdx.x == 0) s_token = tok;
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
