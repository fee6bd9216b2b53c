// The persistent kernel: each CTA walks its SM's task list, step after step, waiting on
// and signalling dependency counters in global memory, and runs each task through the
// generated dispatch `Tasks` (kernel.cu: Tasks::run, Tasks::cache_inputs). With the ring
// the last warp is the producer (producer.cuh); the others, the consumers, run the tasks.
// From kernel.cu: kThreads, kConsumers, kRecord, kStages, kStageBytes, kRing,
// kLeanDispatch, kErrorCopy, kFaultSkipTask, kErrTimeout, kErrBadKind, F_*, Params.
#pragma once
#include "memory.cuh"
#include "producer.cuh"
#include "profile.cuh"
#include "ring.cuh"
#include "task.cuh"

namespace tilert {

// Thread 0 only. Spins until *c >= expected; gives up on another CTA's error or on the bound.
__device__ bool wait_counter(const Params& p, int task, int counter, unsigned expected) {
  const unsigned* c = p.counters + counter;
  unsigned v = ld_acquire(c);
  if (v >= expected) return true;
  const unsigned long long t0 = global_timer();
  for (unsigned poll = 1;; ++poll) {
    v = ld_acquire(c);
    if (v >= expected) return true;
    if (poll % kPollCheck == 0) {  // as in make_fresh
      if (stopped(p)) return false;
      if (global_timer() - t0 > p.timeout_ns) {
        report(p, kErrTimeout, task, counter, (int)v, (int)expected);
        return false;
      }
    }
    __nanosleep(32);
  }
}

// A fault injection build (kFaultSkipTask >= 0): that task never runs (writes and signals
// nothing).
__device__ __forceinline__ bool skipped(int task) {
  return kFaultSkipTask >= 0 && task == kFaultSkipTask;
}

// The kernel's body: the entry point in kernel.cu calls it.
template <class Tasks>
__device__ __forceinline__ void persistent_kernel(const Params& p) {
  extern __shared__ __align__(128) char smem_raw[];
  __shared__ float red[32];
  __shared__ int go;
  __shared__ int s_token;
  __shared__ volatile int halt;  // consumers are done: the producer stops streaming
  Ring ring{};
  if (threadIdx.x == 0) halt = 0;
  if (threadIdx.x == 0) profile_start();
  float* smem = reinterpret_cast<float*>(smem_raw + kStages * kStageBytes);  // after the ring
  if constexpr (kRing) {
    __shared__ __align__(8) uint64_t bars[2 * kStages];
    ring.base = smem_raw;
    ring.full = bars;
    ring.empty = bars + kStages;
    if (threadIdx.x == 0) {
      for (int s = 0; s < kStages; ++s) {
        mbar_init(ring.full + s, 1);
        mbar_init(ring.empty + s, kConsumers);
      }
      asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
  }
  __syncthreads();
  if constexpr (kRing) {
    if (threadIdx.x >= kConsumers) {  // the producer warp
      if (threadIdx.x == kConsumers) produce<Tasks>(p, ring, &halt);
      return;
    }
  }
  const int sm = blockIdx.x;
  // Task records live in shared memory: while task k runs, warp 0 loads task k + 1's
  // (lane l: word l; lane kRecord: its id) into s_rec[(k + 1) & 1] and task k + 2's id, so
  // no task reads its record from global memory on its critical path (ncu: those
  // dependent loads were the top stalls after the input polls). The list wraps from one
  // step to the next.
  __shared__ long long s_rec[2][kRecord + 1];
  // The SM's list bounds, in registers for the whole launch, or (kLeanDispatch: codegen's
  // choice where the kernel spilled, KernelPlan.lean_dispatch) in shared memory, which
  // warp 0 reads once per task.
  __shared__ int s_list[2];
  if constexpr (kLeanDispatch) {
    if (threadIdx.x == 0) {
      s_list[0] = p.sm_start[sm];
      s_list[1] = p.sm_start[sm + 1] - p.sm_start[sm];
    }
    sync_consumers();
  }
  const int first_r = kLeanDispatch ? 0 : p.sm_start[sm];
  const int n_r = kLeanDispatch ? 0 : p.sm_start[sm + 1] - first_r;
  const int& j_first = kLeanDispatch ? s_list[0] : first_r;
  const int& n_mine = kLeanDispatch ? s_list[1] : n_r;
  const int lane = threadIdx.x & 31;
  const bool rec_lane = threadIdx.x <= kRecord;  // warp 0, lanes 0..kRecord
  const auto list_id = [&](int k) { return p.sm_tasks[j_first + k % n_mine]; };
  int next_id = 0;  // warp 0: the id of task k + 1
  if (rec_lane && n_mine > 0) {
    const int id = list_id(0);
    s_rec[0][lane] = lane < kRecord ? p.tasks[(long long)id * kRecord + lane] : id;
    next_id = list_id(1);
  }
  sync_consumers();
  int k = 0;  // tasks run so far in this launch
  // The error word as thread 0 loaded it when the previous task started, stored when
  // that task ended. A task checks that, not a fresh load: a load waited for at every
  // task start put an L2 round trip (0.4-3 us while the weights stream) between a task's
  // start and its first input load. (Kept in a register from one task to the next, the
  // new value was copied at once, which waits for the load: bench/NOTES.md item 53.) An
  // error still stops the SM within one task, and every wait in a task is bounded.
  // kErrorCopy (codegen's choice where the kernel spilled, KernelPlan.error_copy): thread 0
  // copies the word (with the next three: 16 bytes) into s_err_copy by cp.async instead,
  // so no register holds the load across the task; it waits for the copy at the next
  // task's start, long after it landed.
  __shared__ int s_err;
  __shared__ alignas(16) int s_err_copy[4];
  if (threadIdx.x == 0) (kErrorCopy ? s_err_copy[0] : s_err) = 0;
  int err_now = 0;  // thread 0: this task's load of the error word (without kErrorCopy)
  for (int i = 0; i < p.n_steps; ++i) {
    // The step gate: step i starts once step i - 1's sample task has signalled. Every task
    // of step i - 1 is its ancestor, so nothing of step i overwrites what a slower SM still
    // reads; and the sample task has written this step's token (or the prompt holds it).
    if (threadIdx.x == 0) {
      bool ok = !stopped(p);
      int tok = p.token;
      if (i > 0 && ok) {
        ok = wait_counter(p, -1, p.sample_counter, (p.epoch + i - 1) * p.sample_producers);
        tok = ld_cg_int(p.tokens + i);
        if (ok && i >= p.n_forced)
          for (int j = 0; j < p.n_stop; ++j) ok = ok && tok != p.stop_ids[j];
      }
      go = ok;
      s_token = tok;
    }
    sync_consumers();
    const bool run = go;
    const Step st{i, p.pos + i, s_token, p.epoch + (unsigned)i};
    sync_consumers();  // every thread has read go and s_token before thread 0 reuses go
    if (!run) break;
    bool failed = false;
    for (int j = 0; j < n_mine && !failed; ++j, ++k) {
      const long long* rec = s_rec[k & 1];
      const int task = (int)rec[kRecord];
      long long next_word = 0;  // warp 0: task k + 1's record word `lane` (or id)
      int after_id = 0;         // warp 0: task k + 2's id
      if (rec_lane) {
        next_word = lane < kRecord ? p.tasks[(long long)next_id * kRecord + lane] : next_id;
        after_id = list_id(k + 2);
      }
      if constexpr (kProfile)
        if (threadIdx.x == 0) s_t_wait = global_timer();
      if (threadIdx.x == 0) {
        if constexpr (kErrorCopy) cp_async_wait_all();
        bool ok = (kErrorCopy ? s_err_copy[0] : s_err) == 0;
        if constexpr (kErrorCopy)
          cp_async16(s_err_copy, p.error);  // in flight during this task
        else
          err_now = ld_error(p);  // in flight during this task, stored after it
        const long long* wt = p.waits + 2 * rec[F_WAIT];
        for (int k = 0; k < rec[F_NWAIT] && ok; ++k)
          ok = wait_counter(p, task, (int)wt[2 * k], (unsigned)(st.epoch * wt[2 * k + 1]));
        go = ok;
        if constexpr (kProfile) s_t_run = global_timer();
      }
      sync_consumers();
      if (!go) {
        failed = true;
        break;
      }
      if (!skipped(task) && !Tasks::run(p, st, rec, task, smem, red, ring)) {
        if (threadIdx.x == 0) report(p, kErrBadKind, task, -1, (int)rec[F_KIND], 0);
        failed = true;
      }
      if (failed) break;
      if (rec_lane) {  // every reader of s_rec[(k + 1) & 1] (task k - 1) has passed a barrier
        s_rec[(k + 1) & 1][lane] = next_word;
        next_id = after_id;
      }
      sync_consumers();
      if (threadIdx.x == 0) {
        profile_write(p, task);
        if constexpr (!kErrorCopy) s_err = err_now;
        // The barrier orders the CTA's writes before this release (cumulative at gpu scope).
        // A task read only by polling consumers (flags) has no counter.
        if (rec[F_SIGNAL] >= 0 && !skipped(task)) red_release(p.counters + rec[F_SIGNAL], 1u);
      }
    }
    if (failed) break;
  }
  if (threadIdx.x == 0) {
    if constexpr (kErrorCopy) cp_async_wait_all();  // no copy outlives the kernel
    halt = 1;
  }
}

}  // namespace tilert
