// The GEMV task kinds with FP8 weights: norm_linear (stacked QKV), linear_residual
// (o-proj, down-proj) and gate_up_silu, each the bf16 kind's overload with the QBK static
// (its weights' scale k-block, ir/precision.py) and the same arguments; the rows come
// through stream_rows_fp8 (gemv_fp8.cuh). The LM head stays bf16 (CANDS only there).
// codegen includes this header only when a variant has QBK, so bf16 builds do not change.
// From kernel.cu: kConsumers, Params (act, w).
#pragma once
#include "../gemv_fp8.cuh"
#include "gate_up_silu.cuh"
#include "linear_residual.cuh"
#include "norm_linear.cuh"

namespace tilert {

// out[r] = W[r, :] . rmsnorm(x)   (stacked QKV)
template <int K, int R, int CANDS, int QBK>
__device__ void task_norm_linear(const Params& p, const Step& st, const NormLinearArgs& a,
                                 const long long* rec, int task, float* smem, float* red,
                                 Ring& ring) {
  static_assert(!CANDS, "the LM head's weights stay bf16");
  float* x = smem;
  float* ypart = smem + K;
  const int rows = (int)a.rows;
  load_rows<K, true, Fp8Chunking<K, QBK>::kMma>(p, st, task, p.act + a.x, p.w + a.w_gamma, x, red);
  stream_rows_fp8<K, R, QBK>(p, rec, task, x, ypart, red, ring, rows);
  float* out = p.act + a.out;
  for (int r = threadIdx.x; r < rows; r += kConsumers)
    out[r] = flagged(row_result_fp8<K, R, QBK>(ypart, r), st.epoch & 1u);
}

// out[r] = residual[r] + W[r, :] . x   (o-proj, down-proj)
template <int K, int R, int QBK>
__device__ void task_linear_residual(const Params& p, const Step& st, const LinearResidualArgs& a,
                                     const long long* rec, int task, float* smem, float* red,
                                     Ring& ring) {
  float* x = smem;
  float* ypart = smem + K;
  const float* res = p.act + a.residual;
  const int rows = (int)a.rows;
  const unsigned par = st.epoch & 1u;
  const float res0 = threadIdx.x < rows ? ld_act(res + threadIdx.x) : 0.f;  // in flight early
  load_rows<K, false, Fp8Chunking<K, QBK>::kMma>(p, st, task, p.act + a.x, nullptr, x, nullptr);
  stream_rows_fp8<K, R, QBK>(p, rec, task, x, ypart, red, ring, rows);
  float* out = p.act + a.out;
#pragma unroll 1
  for (int r = threadIdx.x; r < rows; r += kConsumers) {
    const bool early = r == threadIdx.x;  // res0 holds residual r
    const float rv = fresh_at(p, res + r, early ? res0 : ld_act(res + r), par, task);
    out[r] = flagged(rv + row_result_fp8<K, R, QBK>(ypart, r), par);
  }
}

// out[r] = silu(gate[r] . xn) * (up[r] . xn), xn = rmsnorm(x)
template <int K, int R, int QBK>
__device__ void task_gate_up_silu(const Params& p, const Step& st, const GateUpSiluArgs& a,
                                  const long long* rec, int task, float* smem, float* red,
                                  Ring& ring) {
  float* x = smem;
  float* ypart = smem + K;
  const int rows = (int)a.rows;
  load_rows<K, true, Fp8Chunking<K, QBK>::kMma>(p, st, task, p.act + a.x, p.w + a.w_gamma, x, red);
  stream_rows_fp8<K, R, QBK>(p, rec, task, x, ypart, red, ring, 2 * rows);  // gate, then up rows
  float* out = p.act + a.out;
  for (int r = threadIdx.x; r < rows; r += kConsumers) {
    const float g = row_result_fp8<K, R, QBK>(ypart, r);
    const float u = row_result_fp8<K, R, QBK>(ypart, rows + r);
    out[r] = flagged(g / (1.f + expf(-g)) * u, st.epoch & 1u);
  }
}

}  // namespace tilert
