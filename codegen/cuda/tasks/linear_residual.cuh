// linear_residual: a GEMV plus the residual (o-proj, down-proj).
// From kernel.cu: kConsumers, Params (act).
#pragma once
#include "../gemv.cuh"

namespace tilert {

// linear_residual: out[r] = residual[r] + W[r, :] . x   (o-proj, down-proj)
template <int K, int R>
__device__ void task_linear_residual(const Params& p, const Step& st, const LinearResidualArgs& a,
                                     const long long* rec, int task, float* smem, float*,
                                     Ring& ring) {
  float* x = smem;
  float* ypart = smem + K;
  const float* res = p.act + a.residual;
  const int rows = (int)a.rows;
  const unsigned par = st.epoch & 1u;
  const float res0 = threadIdx.x < rows ? ld_act(res + threadIdx.x) : 0.f;  // in flight early
  load_rows<K, false>(p, st, task, p.act + a.x, nullptr, x, nullptr);
  stream_rows<K, R>(p, rec, task, x, ypart, ring, rows);
  float* out = p.act + a.out;
#pragma unroll 1  // a task has few rows: one pass per thread, as a rule
  for (int r = threadIdx.x; r < rows; r += kConsumers) {
    const bool early = r == threadIdx.x;  // res0 holds residual r
    const float rv = fresh_at(p, res + r, early ? res0 : ld_act(res + r), par, task);
    out[r] = flagged(rv + row_result<K, R>(ypart, r), par);
  }
}

}  // namespace tilert
