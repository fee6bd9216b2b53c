// gate_up_silu: rmsnorm, the gate and up GEMVs, SiLU(gate) * up.
// From kernel.cu: kConsumers, Params (act, w).
#pragma once
#include "../gemv.cuh"

namespace tilert {

// gate_up_silu: out[r] = silu(gate[r] . xn) * (up[r] . xn), xn = rmsnorm(x)
template <int K, int R>
__device__ void task_gate_up_silu(const Params& p, const Step& st, const GateUpSiluArgs& a,
                                  const long long* rec, int task, float* smem, float* red,
                                  Ring& ring) {
  float* x = smem;
  float* ypart = smem + K;
  const int rows = (int)a.rows;
  load_rows<K, true>(p, st, task, p.act + a.x, p.w + a.w_gamma, x, red);
  stream_rows<K, R>(p, rec, task, x, ypart, ring, 2 * rows);  // gate rows, then up rows
  float* out = p.act + a.out;
  for (int r = threadIdx.x; r < rows; r += kConsumers) {
    const float g = row_result<K, R>(ypart, r);
    const float u = row_result<K, R>(ypart, rows + r);
    out[r] = flagged(g / (1.f + expf(-g)) * u, st.epoch & 1u);
  }
}

}  // namespace tilert
