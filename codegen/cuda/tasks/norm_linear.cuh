// norm_linear: rmsnorm then a GEMV (stacked QKV, the LM head with its partial).
// From kernel.cu: kConsumers, kGreedy, kSampled, kPartHeader, PartField, Params (act, w,
// mode, n_forced, temperature).
#pragma once
#include "../gemv.cuh"
#include "../sample.cuh"

namespace tilert {

// The rest of the LM head task's partial (ir/lm_parts.py), when the step draws a sampled
// token: the sum of exp(z - zbest) over its rows, its top C rows as candidates (those above
// the (C + 1)-th largest logit, found by a radix select over the rows in shared memory),
// that bound, and its rows' extent and smallest logit. Greedy steps skip it.
template <int K, int R, int C>
__device__ void lm_head_part(const Params& p, float* part, const float* ypart, int rows, int row0,
                             float best, float* red, unsigned* hist) {
  const auto y_of = [&](int r) { return row_result<K, R>(ypart, r); };
  const float t = p.temperature, zb = best / t;
  float sum = 0.f, low = INFINITY;
  for (int r = threadIdx.x; r < rows; r += kConsumers) {
    const float y = y_of(r);
    sum += expf(y / t - zb);
    low = fminf(low, y);
  }
  sum = block_sum(sum, red);
  low = -block_max(-low, red);
  float bound = -INFINITY;
  if (rows > C) bound = select_threshold<false>(rows, y_of, 0.f, -INFINITY, (unsigned)C + 1, hist);
  __shared__ int s_n;
  if (threadIdx.x == 0) s_n = 0;
  sync_consumers();
  float* cand = part + kPartHeader;  // (logit, index) pairs, in no particular order
  for (int r = threadIdx.x; r < rows; r += kConsumers) {
    const float y = y_of(r);
    if (y > bound) {  // at most C rows
      const int k = atomicAdd(&s_n, 1);
      cand[2 * k] = y;
      cand[2 * k + 1] = (float)(row0 + r);
    }
  }
  sync_consumers();
  if (threadIdx.x == 0) {
    part[P_SUMEXP] = sum;
    part[P_BOUND] = bound;
    part[P_COUNT] = (float)s_n;
    part[P_ROW0] = (float)row0;
    part[P_ROWS] = (float)rows;
    part[P_LOW] = low;
  }
}

// norm_linear: out[r] = W[r, :] . rmsnorm(x)   (stacked QKV, LM head). The LM head
// (CANDS > 0) also writes its partial: (largest value, its first row index) of its rows,
// which greedy sampling reduces instead of reading every logit, and when the step draws a
// sampled token, its CANDS candidates (lm_head_part).
template <int K, int R, int CANDS>
__device__ void task_norm_linear(const Params& p, const Step& st, const NormLinearArgs& a,
                                 const long long* rec, int task, float* smem, float* red,
                                 Ring& ring) {
  float* x = smem;
  float* ypart = smem + K;
  const int rows = (int)a.rows;
  load_rows<K, true>(p, st, task, p.act + a.x, p.w + a.w_gamma, x, red);
  stream_rows<K, R>(p, rec, task, x, ypart, ring, rows);
  float* out = p.act + a.out;
  float best = -INFINITY;
  int at = 0x7fffffff;
  for (int r = threadIdx.x; r < rows; r += kConsumers) {
    const float y = row_result<K, R>(ypart, r);
    // The LM head's logits are read by the sample task after a counter wait: not flagged.
    out[r] = CANDS ? y : flagged(y, st.epoch & 1u);
    if (CANDS && y > best) best = y, at = r;  // r rises: the first of a tie stays
  }
  if constexpr (CANDS > 0) {
    block_argmax(best, at);
    float* part = p.act + a.part_out;
    if (threadIdx.x == 0) {
      part[P_BEST] = best;
      part[P_AT] = (float)(a.row0 + at);
    }
    if (p.mode == kSampled && st.i + 1 >= p.n_forced) {
      static_assert(K + Chunking<K>::kSplit * R + kBins <= kScratchFloats, "codegen's scratch_floats");
      unsigned* hist = reinterpret_cast<unsigned*>(ypart + Chunking<K>::kSplit * R);  // [kBins]
      lm_head_part<K, R, CANDS>(p, part, ypart, rows, (int)a.row0, best, red, hist);
    }
  }
}

}  // namespace tilert
