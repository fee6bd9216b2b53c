// norm_linear: rmsnorm then a GEMV (stacked QKV, the LM head with its argmax partial).
// From kernel.cu: kConsumers, Params (act, w).
#pragma once
#include "../gemv.cuh"

namespace tilert {

// norm_linear: out[r] = W[r, :] . rmsnorm(x)   (stacked QKV, LM head). The LM head
// (ARGMAX) also writes (largest value, its first row index) of its rows: greedy sampling
// reduces those partials instead of reading every logit.
template <int K, int R, int ARGMAX>
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
    out[r] = ARGMAX ? y : flagged(y, st.epoch & 1u);
    if (ARGMAX && y > best) best = y, at = r;  // r rises: the first of a tie stays
  }
  if (ARGMAX) {
    block_argmax(best, at);
    if (threadIdx.x == 0) {
      float* part = p.act + a.argmax_out;
      part[0] = best;
      part[1] = (float)(a.row0 + at);
    }
  }
}

}  // namespace tilert
