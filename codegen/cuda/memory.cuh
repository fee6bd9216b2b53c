// Memory primitives: loads and stores with the ordering and caching the kernel relies on,
// the consumers' barrier, and the error word every bounded wait reports to.
// From kernel.cu: kConsumers, Params (error, timeout_ns).
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

namespace tilert {

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void red_release(unsigned* p, unsigned v) {
  asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ unsigned long long global_timer() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
// Weights are read once per step: bypass L1, keep the read-only path.
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 { %0, %1, %2, %3 }, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}
__device__ __forceinline__ void prefetch_l2(const void* p, unsigned bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
}
// [p, p + bytes) asked of L2, in bulk prefetches of at most 64 KB each.
__device__ __forceinline__ void prefetch_l2_range(const void* p, long long bytes) {
  const char* c = static_cast<const char*>(p);
  for (long long o = 0; o < bytes; o += 65536) prefetch_l2(c + o, (unsigned)min(65536LL, bytes - o));
}
// Activations are written by other SMs during the step: read them at L2 (never stale L1).
__device__ __forceinline__ float ld_act(const float* p) { return __ldcg(p); }
__device__ __forceinline__ int ld_cg_int(const int* p) { return __ldcg(p); }
__device__ __forceinline__ float4 ld_act4(const float* p) {
  return __ldcg(reinterpret_cast<const float4*>(p));
}
// The error word, as a relaxed load (see s_err in the task loop); an error stops a CTA.
__device__ __forceinline__ int ld_error(const Params& p) {
  int v;
  asm volatile("ld.relaxed.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(p.error));
  return v;
}
__device__ __forceinline__ bool stopped(const Params& p) { return ld_error(p) != 0; }
// Bounded waits look at the error word (and the clock) every kPollCheck polls, not after
// each: the word's load is an L2 round trip of its own.
constexpr unsigned kPollCheck = 16;
// The consumer warps' barrier (the producer warp, if any, never joins it).
__device__ __forceinline__ void sync_consumers() {
  asm volatile("bar.sync 1, %0;" ::"n"(kConsumers) : "memory");
}
__device__ void report_to(int* error, int code, int task, int counter, int value, int expected) {
  if (atomicCAS(error, 0, code) == 0) {
    error[1] = blockIdx.x;
    error[2] = task;
    error[3] = counter;
    error[4] = value;
    error[5] = expected;
    __threadfence_system();
  }
}
__device__ __forceinline__ void report(const Params& p, int code, int task, int counter, int value,
                                       int expected) {
  report_to(p.error, code, task, counter, value, expected);
}

// 16 bytes global -> shared without registers (through L2 only); cp_async_wait_all: this
// thread's copies have landed (a barrier then shows them to the other threads).
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(
                   static_cast<uint32_t>(__cvta_generic_to_shared(dst))),
               "l"(src)
               : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_all;" ::: "memory");
}
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

}  // namespace tilert
