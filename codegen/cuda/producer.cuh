// The weight ring's producer: the last warp's first thread walks the SM's weight chunks in
// the order its consumers will take them and bulk-copies each into a free ring stage,
// running ahead across task and step boundaries. `Tasks` (the generated dispatch) says
// which inputs of a task to ask L2 for when the walk passes it (cache_inputs).
// From kernel.cu: kRecord, kStageBytes, kStages, kInFlight, kCachePrefetch, F_NSTREAM,
// F_STREAM, kWaitFree, kWaitCopy, Params (tasks, stream, sm_start, sm_tasks, w, n_steps, pos).
#pragma once
#include "ring.cuh"

namespace tilert {

// The SM's weight chunks in the order the consumers take them: its task list, step after
// step; each task's stream entries; each entry in chunks of whole rows, one ring stage
// each. The producer walks it to copy chunks into the ring, asking L2 for the inputs of
// the tasks it passes (cache_inputs).
template <class Tasks>
struct ChunkWalk {
  int step, j, e;      // step of the launch, index in the SM's list, stream entry
  long long r0;        // first row of the next chunk
  int task;            // the task the last chunk belongs to
  __device__ explicit ChunkWalk(const Params& p)
      : step(0), j(p.sm_start[blockIdx.x]), e(0), r0(0), task(-1) {}
  // The next chunk's source and bytes; false past the last step.
  __device__ bool next(const Params& p, const __nv_bfloat16*& src, unsigned& bytes) {
    for (;;) {
      if (step >= p.n_steps) return false;
      if (j >= p.sm_start[blockIdx.x + 1]) {
        ++step, j = p.sm_start[blockIdx.x], e = 0, r0 = 0;
        continue;
      }
      task = p.sm_tasks[j];
      const long long* rec = p.tasks + (long long)task * kRecord;
      if (e >= rec[F_NSTREAM]) {
        if (kCachePrefetch && e == 0) Tasks::cache_inputs(p, p.pos + step, rec);
        ++j, e = 0, r0 = 0;
        continue;
      }
      const long long* st = p.stream + 3 * (rec[F_STREAM] + e);
      const long long row_len = st[2], rows = st[1] / row_len;
      const long long per = max(1LL, kStageBytes / (2 * row_len));
      if (r0 >= rows) {
        ++e, r0 = 0;
        continue;
      }
      src = p.w + st[0] + r0 * row_len;
      bytes = (unsigned)(min(per, rows - r0) * row_len * 2);
      r0 += per;
      return true;
    }
  }
};

// Ring copies read each weight byte once per step: their L2 lines go first when L2 needs
// room, so the activations and the prefetched cache rows stay.
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t pol;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
  return pol;
}
// 1-D bulk copy global -> shared, completing on `bar` (counted in bytes), L2 policy `pol`.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, unsigned bytes,
                                          uint64_t* bar, uint64_t pol) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint"
      " [%0], [%1], %2, [%3], %4;"
      ::"r"(smem_addr(dst)), "l"(src), "r"(bytes), "r"(smem_addr(bar)), "l"(pol) : "memory");
}

// The producer: one thread walks the SM's chunks ahead of the consumers and copies each
// into the ring as soon as a stage is free. It stops when the consumers stop (`*halt`:
// the last step, a stop id or an error), then waits for the copies still in flight before
// the CTA may exit.
template <class Tasks>
__device__ void produce(const Params& p, Ring& ring, const volatile int* halt) {
  const uint64_t pol = evict_first_policy();
  unsigned issued = 0;
  ChunkWalk<Tasks> copy(p);
  const __nv_bfloat16* src;
  unsigned bytes;
  while (copy.next(p, src, bytes)) {
    // A free stage: the consumers released it, or they stopped (then drain).
    uint64_t* empty = ring.empty + ring.stage;
    if (!mbar_wait(empty, ring.phase ^ 1u, p, copy.task, kWaitFree, halt)) goto drain;
    // At most kInFlight copies in flight: copy c waits until copy c - kInFlight landed.
    if (kInFlight < kStages && issued >= (unsigned)kInFlight) {
      const unsigned c = issued - kInFlight;
      const unsigned par = (c / kStages) & 1u;
      if (!mbar_wait(ring.full + c % kStages, par, p, copy.task, kWaitCopy, halt)) goto drain;
    }
    mbar_expect_tx(ring.full + ring.stage, bytes);
    bulk_copy(ring.base + ring.stage * kStageBytes, src, bytes, ring.full + ring.stage, pol);
    ring.advance();
    ++issued;
  }
drain:  // the last kStages copies may still be landing in shared memory
  for (unsigned c = issued > (unsigned)kStages ? issued - kStages : 0; c < issued; ++c)
    if (!mbar_wait(ring.full + c % kStages, (c / kStages) & 1u, p, -1)) return;
}

}  // namespace tilert
