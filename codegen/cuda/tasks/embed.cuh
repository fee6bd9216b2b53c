// embed: the step's token's row of the embedding table, into the act arena.
// From kernel.cu: kConsumers, Params (w, act).
#pragma once
#include "../flags.cuh"
#include "../ring.cuh"
#include "../task.cuh"

namespace tilert {

// embed: act[out + i] = table[token, row0 + i]
template <int D>
__device__ void task_embed(const Params& p, const Step& st, const EmbedArgs& a, const long long*,
                           int, float*, float*, Ring&) {
  const __nv_bfloat16* row = p.w + a.w_table + (long long)st.token * D;
  float* out = p.act + a.out;
  for (int i = threadIdx.x; i < a.rows; i += kConsumers)
    out[i] = flagged(__bfloat162float(row[i]), st.epoch & 1u);
}

}  // namespace tilert
