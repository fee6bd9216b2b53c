// What a hand-off costs between two SMs, idle and beside a weight stream like the ring's.
//
//   nvcc -arch=sm_90a -O3 -o handoff bench/handoff.cu && ./handoff
//
// Two CTAs on different SMs ping-pong one flagged word, as the kernel's hand-offs do: the
// writer stores a value whose lowest bit is the round's parity (a plain store), the reader
// polls it with relaxed gpu-scope loads until the parity is the round's, then answers the
// same way. Half a round trip is one hand-off: a store becoming visible plus the poll that
// sees it. Every other CTA (and, in the "own SM too" rows, a producer warp in the two
// ping-pong CTAs) streams bulk copies (8-48 KB) from a 2 GiB buffer into shared memory
// with `inflight` copies outstanding, as the ring's producer does. Prints ns per hand-off
// (median over 5 launches of each launch's median round trip / 2, at the clock the loop
// ran at) and the stream's bandwidth.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#define CHECK(x)                                                                      \
  do {                                                                                \
    cudaError_t e = (x);                                                              \
    if (e != cudaSuccess) {                                                           \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e), __FILE__, __LINE__); \
      return 1;                                                                       \
    }                                                                                 \
  } while (0)

constexpr int kStage = 49152, kStages = 4, kRounds = 2000;  // ring slots; copies <= kStage

__device__ __forceinline__ unsigned smem_u32(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ float poll(const float* p) {
  float v;
  asm volatile("ld.relaxed.gpu.global.f32 %0, [%1];" : "=f"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ bool has(float v, unsigned par) {
  return (__float_as_uint(v) & 1u) == par;
}
__device__ __forceinline__ float flagged(float v, unsigned par) {
  return __uint_as_float((__float_as_uint(v) & ~1u) | par);
}

// Copy k (of a ring of kStages barriers) has landed.
__device__ void wait_landed(uint64_t* full, unsigned k) {
  const unsigned bar = smem_u32(full + k % kStages), par = (k / kStages) & 1u;
  unsigned ok = 0;
  while (!ok)
    asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                 " selp.u32 %0, 1, 0, p;\n}"
                 : "=r"(ok) : "r"(bar), "r"(par) : "memory");
}

// A producer thread: copies of `copy` bytes of src into a 4-stage ring, at most `inflight`
// outstanding, until *stop is set.
__device__ void stream(const char* src, long long bytes, char* ring, uint64_t* full,
                       int inflight, int copy, const volatile int* stop,
                       unsigned long long* moved) {
  const long long chunks = bytes / copy;
  long long c = (long long)blockIdx.x * (chunks / gridDim.x);  // each CTA its own stretch
  unsigned issued = 0;
  while (!*stop) {
    if (issued >= (unsigned)inflight) wait_landed(full, issued - inflight);
    const unsigned s = issued % kStages;
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(full + s)),
                 "r"(copy) : "memory");
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
            smem_u32(ring + s * kStage)),
        "l"(src + c * copy), "r"(copy), "r"(smem_u32(full + s))
        : "memory");
    ++issued;
    c = (c + 1) % chunks;
  }
  for (unsigned k = issued > (unsigned)inflight ? issued - inflight : 0; k < issued; ++k)
    wait_landed(full, k);  // the copies still landing
  atomicAdd(moved, (unsigned long long)issued * copy);
}

// CTA 0 and CTA `peer` ping-pong through words[0] and words[32]; the others stream
// (inflight > 0) until the pair is done. own: the two ping-pong CTAs stream too (warp 1).
// cyc[r]: CTA 0's cycles for round trip r; cyc[0], cyc[1]: the whole loop's cycles and ns.
__global__ void __launch_bounds__(64, 1)
    handoff(float* words, const char* src, long long bytes, int peer, int inflight, int copy,
            int own, unsigned* done, unsigned long long* cyc, unsigned long long* moved) {
  extern __shared__ __align__(128) char ring[];
  __shared__ __align__(8) uint64_t full[kStages];
  __shared__ volatile int stop;
  const bool pinger = blockIdx.x == 0, ponger = blockIdx.x == (unsigned)peer;
  const bool pair = pinger || ponger;
  if (threadIdx.x == 0) {
    stop = 0;
    for (int s = 0; s < kStages; ++s)
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_u32(full + s)));
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (threadIdx.x == 32) {
    if (inflight > 0 && (!pair || own))
      stream(src, bytes, ring, full, inflight, copy, &stop, moved);
    return;
  }
  if (threadIdx.x != 0) return;
  if (!pair) {  // the stream's watcher
    while (*reinterpret_cast<volatile unsigned*>(done) == 0) __nanosleep(500);
    stop = 1;
    return;
  }
  float* mine = words + (pinger ? 32 : 0);  // what this CTA polls
  float* theirs = words + (pinger ? 0 : 32);
  unsigned long long c0 = clock64(), g0, g1;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(g0));
  for (int r = 1; r <= kRounds; ++r) {
    const unsigned par = r & 1u;
    const unsigned long long t0 = clock64();
    if (pinger) {
      *reinterpret_cast<volatile float*>(theirs) = flagged(1.f + r, par);
      while (!has(poll(mine), par)) {
      }
      cyc[r] = clock64() - t0;
    } else {
      while (!has(poll(mine), par)) {
      }
      *reinterpret_cast<volatile float*>(theirs) = flagged(2.f + r, par);
    }
  }
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(g1));
  if (pinger) {
    cyc[0] = clock64() - c0;
    cyc[1] = g1 - g0;
    atomicExch(done, 1u);
  }
  stop = 1;
}

int main() {
  int sms = 0, clock_khz = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0));
  const long long bytes = 2LL << 30;
  char* src;
  float* words;
  unsigned* done;
  unsigned long long *ns, *moved;
  CHECK(cudaMalloc(&src, bytes));
  CHECK(cudaMemset(src, 1, bytes));
  CHECK(cudaMalloc(&words, 64 * sizeof(float)));
  CHECK(cudaMalloc(&done, sizeof(unsigned)));
  CHECK(cudaMalloc(&ns, (kRounds + 1) * sizeof(unsigned long long)));
  CHECK(cudaMalloc(&moved, sizeof(unsigned long long)));
  const int smem = kStages * kStage;
  CHECK(cudaFuncSetAttribute(handoff, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  std::printf("%d SMs, SM clock %.2f GHz (nominal); ping-pong CTAs 0 and %d\n", sms,
              clock_khz / 1e6, sms / 2);
  struct Case {
    const char* name;
    int inflight, copy_kb, own;
  } cases[] = {{"idle", 0, 32, 0},
               {"stream, other SMs, 1 x 8 KB in flight", 1, 8, 0},
               {"stream, other SMs, 1 x 16 KB in flight", 1, 16, 0},
               {"stream, other SMs, 1 x 24 KB in flight", 1, 24, 0},
               {"stream, other SMs, 1 x 32 KB in flight", 1, 32, 0},
               {"stream, other SMs, 2 x 16 KB in flight", 2, 16, 0},
               {"stream, other SMs, 1 x 48 KB in flight", 1, 48, 0},
               {"stream, other SMs, 2 x 32 KB in flight", 2, 32, 0},
               {"stream, other SMs, 4 x 32 KB in flight", 4, 32, 0},
               {"stream, every SM (own too), 1 x 32 KB", 1, 32, 1},
               {"stream, every SM (own too), 4 x 32 KB", 4, 32, 1}};
  for (const Case& c : cases) {
    std::vector<double> per_rep;
    double gbps = 0, ghz = 1;
    for (int rep = 0; rep < 5; ++rep) {
      CHECK(cudaMemset(words, 0, 64 * sizeof(float)));  // parity 0: round 1 waits for 1
      CHECK(cudaMemset(done, 0, sizeof(unsigned)));
      CHECK(cudaMemset(ns, 0, (kRounds + 1) * sizeof(unsigned long long)));
      CHECK(cudaMemset(moved, 0, sizeof(unsigned long long)));
      cudaEvent_t a, b;
      CHECK(cudaEventCreate(&a));
      CHECK(cudaEventCreate(&b));
      CHECK(cudaEventRecord(a));
      int peer = sms / 2, inflight = c.inflight, copy = c.copy_kb * 1024, own = c.own;
      long long nbytes = bytes;
      void* args[] = {&words, &src, &nbytes, &peer, &inflight, &copy, &own, &done, &ns, &moved};
      CHECK(cudaLaunchCooperativeKernel((void*)handoff, sms, 64, args, smem, 0));
      CHECK(cudaEventRecord(b));
      CHECK(cudaDeviceSynchronize());
      float ms = 0;
      CHECK(cudaEventElapsedTime(&ms, a, b));
      std::vector<unsigned long long> cyc(kRounds + 1);
      unsigned long long mv = 0;
      CHECK(cudaMemcpy(cyc.data(), ns, cyc.size() * sizeof(cyc[0]), cudaMemcpyDeviceToHost));
      CHECK(cudaMemcpy(&mv, moved, sizeof(mv), cudaMemcpyDeviceToHost));
      std::vector<double> rt(cyc.begin() + 101, cyc.end());
      std::sort(rt.begin(), rt.end());
      ghz = (double)cyc[0] / (double)cyc[1];  // the clock the loop ran at
      per_rep.push_back(rt[rt.size() / 2] / 2 / ghz);  // ns per hand-off
      gbps = mv / (ms * 1e-3) / 1e9;
    }
    std::sort(per_rep.begin(), per_rep.end());
    std::printf("HANDOFF %-42s %6.0f ns (median of 5 runs: %.0f-%.0f); SM clock %.2f GHz; stream %5.0f GB/s\n",
                c.name, per_rep[2], per_rep[0], per_rep[4], ghz, gbps);
  }
  return 0;
}
