// Profiled builds (kProfile): thread 0's global-timer stamps of each task, written to
// Params::profile after it, kProfileWords a task (ir/tasktable.py PROFILE_WORDS): wait
// start, run start, end; ns spent waiting for ring chunks; when the inputs were loaded
// and when the task's own work was done (a GEMV's rows dotted, before the epilogue; an
// attention split's partials written, before the combine), or 0; ns spent on the chunks.
// Without kProfile every function here is empty.
// From kernel.cu: kProfile, kProfileWords, Params (profile).
#pragma once
#include "memory.cuh"

namespace tilert {

// In shared memory, not in registers held across the task: the GEMV's x takes those.
// The chunk times are 32 bits: a task's share is far below 4 s.
__shared__ unsigned long long s_loaded, s_computed;
__shared__ unsigned long long s_t_wait, s_t_run;
__shared__ unsigned s_weight_wait_ns, s_chunk_ns;

__device__ __forceinline__ void mark_loaded() {
  if constexpr (kProfile)
    if (threadIdx.x == 0) s_loaded = global_timer();
}
__device__ __forceinline__ void mark_computed() {
  if constexpr (kProfile)
    if (threadIdx.x == 0) s_computed = global_timer();
}

// At the kernel's start (thread 0).
__device__ __forceinline__ void profile_start() {
  if constexpr (kProfile) s_loaded = s_computed = s_weight_wait_ns = s_chunk_ns = 0;
}

// Thread 0 after the task: its stamps to the profile buffer, the counters cleared.
__device__ __forceinline__ void profile_write(const Params& p, int task) {
  if constexpr (kProfile) {
    unsigned long long* prof = p.profile + (long long)kProfileWords * task;
    prof[0] = s_t_wait;
    prof[1] = s_t_run;
    prof[2] = global_timer();
    prof[3] = s_weight_wait_ns;
    prof[4] = s_loaded;
    prof[5] = s_computed;
    prof[6] = s_chunk_ns;
    s_weight_wait_ns = s_chunk_ns = 0;
    s_loaded = s_computed = 0;
  }
}

}  // namespace tilert
