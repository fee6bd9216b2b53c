// The weight ring's mbarriers (sm_90): a stage completes when its bulk copy's bytes
// land (full) or when every consumer thread has released it (empty); every wait bounded.
// From kernel.cu: kStages, kErrStreamTimeout, kWaitStage/kWaitCopy/kWaitFree, Params.
#pragma once
#include "memory.cuh"

namespace tilert {

__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count));
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)),
               "r"(bytes) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint64_t* bar, unsigned parity) {
  uint32_t ok;
  asm volatile(
      "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      " selp.u32 %0, 1, 0, p;\n}"
      : "=r"(ok) : "r"(smem_addr(bar)), "r"(parity) : "memory");
  return ok != 0;
}
// Bounded: gives up once *halt is set (the producer's: the consumers stopped), on another
// CTA's error or after the timeout, which it reports with `which`, what the wait was for.
// The error word and the clock are looked at every kPollCheck polls (the word's load is
// an L2 round trip: a phase completing during it would be noticed only after it).
__device__ bool mbar_wait(uint64_t* bar, unsigned parity, const Params& p, int task,
                          int which = kWaitStage, const volatile int* halt = nullptr) {
  if (mbar_try_wait(bar, parity)) return true;
  const unsigned long long t0 = global_timer();
  for (unsigned poll = 1; !mbar_try_wait(bar, parity); ++poll) {
    if (halt != nullptr && *halt) return false;
    if (poll % kPollCheck != 0) continue;
    if (stopped(p)) return false;
    if (global_timer() - t0 > p.timeout_ns) {
      report(p, kErrStreamTimeout, task, -1, (int)parity, which);
      return false;
    }
  }
  return true;
}

// The weight ring: stage i holds one chunk; full[i] completes when its bytes land,
// empty[i] when every consumer thread is done with it. Both sides walk the same chunk
// sequence (the SM's tasks' stream entries, in order), so they agree on stage and phase.
struct Ring {
  char* base;
  uint64_t* full;
  uint64_t* empty;
  int stage;
  unsigned phase;
  __device__ void advance() {
    if (++stage == kStages) {
      stage = 0;
      phase ^= 1u;
    }
  }
};

}  // namespace tilert
