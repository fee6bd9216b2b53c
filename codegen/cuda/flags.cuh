// Data that carries its step (kFlags): activations written with the step's parity in the
// lowest mantissa bit, and the loads that poll them until fresh, in batches.
// From kernel.cu: kFlags, kConsumers, kErrInputTimeout, Params (act, timeout_ns).
#pragma once
#include "memory.cuh"

namespace tilert {

// With kFlags, a task writes each activation value with the step's parity (epoch & 1) in
// the lowest mantissa bit, in one 32-bit store, so value and flag land together (that bit
// moves a value by at most one unit in the last place). A reader loads until every
// element it needs has this step's parity: the data is its own signal, with no counter
// release (a fence until the writes reach L2) and no counter poll before the loads. Every
// element is written once per step and steps are ordered by the step gate, so the only
// stale values a reader can see are the previous step's, whose parity differs. The
// runtime fills the activations with NaN (parity 0) whenever it restarts the epochs.
__device__ __forceinline__ float flagged(float v, unsigned par) {
  return kFlags ? __uint_as_float((__float_as_uint(v) & ~1u) | par) : v;
}
__device__ __forceinline__ bool fresh(float v, unsigned par) {
  return !kFlags || (__float_as_uint(v) & 1u) == par;
}
__device__ __forceinline__ bool fresh(float4 v, unsigned par) {
  const unsigned a = __float_as_uint(v.x), b = __float_as_uint(v.y), c = __float_as_uint(v.z),
                 d = __float_as_uint(v.w);
  return !kFlags || (par ? (a & b & c & d & 1u) != 0 : ((a | b | c | d) & 1u) == 0);
}
// A load the compilers may not hoist out of a polling loop: a strong (relaxed, gpu scope)
// load. A weak one (__ldcg, even in asm volatile) was hoisted by ptxas: the SASS loop
// branched back past the load and spun on its first value (bench/NOTES.md, run S4-2).
__device__ __forceinline__ void ld_poll(const float* p, float4& v) {
  asm volatile("ld.relaxed.gpu.global.v4.f32 {%0, %1, %2, %3}, [%4];"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "l"(p) : "memory");
}
__device__ __forceinline__ void ld_poll(const float* p, float& v) {
  asm volatile("ld.relaxed.gpu.global.f32 %0, [%1];" : "=f"(v) : "l"(p) : "memory");
}
// Every v[it] for which at(it) is an address (nullptr: no element) carries this step's
// parity once this returns: the stale ones are reloaded together, one round trip a pass.
// (Reloading one element until fresh, then the next, costs a round trip per element that
// was stale when loaded: up to one per producer task a thread reads from.) Bounded: on
// another CTA's error, or past the timeout (reporting the first stale element's act
// offset), it returns what it has and the CTA stops at its next task. The error word is
// looked at every kPollCheck passes, not after each: its load is a round trip of its own.
template <int N, class T, class At>
__device__ __forceinline__ void make_fresh(const Params& p, T (&v)[N], At at, unsigned par,
                                           int task) {
  if (!kFlags) return;
  bool stale = false;
#pragma unroll
  for (int it = 0; it < N; ++it) stale |= at(it) != nullptr && !fresh(v[it], par);
  if (!stale) return;
  const unsigned long long t0 = global_timer();
  for (unsigned pass = 1;; ++pass) {
#pragma unroll
    for (int it = 0; it < N; ++it)  // every stale load in flight before any is checked
      if (at(it) != nullptr && !fresh(v[it], par)) ld_poll(at(it), v[it]);
    const float* first = nullptr;
#pragma unroll
    for (int it = N - 1; it >= 0; --it)
      if (at(it) != nullptr && !fresh(v[it], par)) first = at(it);
    if (first == nullptr) return;
    if (pass % kPollCheck != 0) continue;
    if (stopped(p)) return;
    if (global_timer() - t0 > p.timeout_ns) {
      report(p, kErrInputTimeout, task, -1, (int)(first - p.act), (int)par);
      return;
    }
  }
}

// v, loaded from src, or (stale) src reloaded until fresh: make_fresh of one element.
template <class T>
__device__ __forceinline__ T fresh_at(const Params& p, const float* src, T v, unsigned par,
                                      int task) {
  T one[1] = {v};
  make_fresh(p, one, [&](int) { return src; }, par, task);
  return one[0];
}

__device__ __forceinline__ void ld_act_to(const float* p, float& v) { v = ld_act(p); }
__device__ __forceinline__ void ld_act_to(const float* p, float4& v) { v = ld_act4(p); }

// The batch size that loads N values in the fewest batches of at most `cap` each, evenly
// (N = 10, cap 8: two batches of 5, not 8 + 2).
__host__ __device__ constexpr int even_batch(int n, int cap) {
  return (n + (n + cap - 1) / cap - 1) / ((n + cap - 1) / cap);
}

// use(it, value) for every element it < N whose address at(it) is not nullptr, loaded B at
// a time into registers (a batch: all loads in flight, then made fresh together): a round
// trip per batch, and at most B values of T live in registers.
template <int N, int B, class T, class At, class Use>
__device__ __forceinline__ void load_fresh(const Params& p, At at, Use use, unsigned par,
                                           int task) {
#pragma unroll
  for (int b0 = 0; b0 < N; b0 += B) {
    const auto at_b = [&](int u) -> const float* { return b0 + u < N ? at(b0 + u) : nullptr; };
    T v[B];
#pragma unroll
    for (int u = 0; u < B; ++u)
      if (at_b(u) != nullptr) ld_act_to(at_b(u), v[u]);
    make_fresh(p, v, at_b, par, task);
#pragma unroll
    for (int u = 0; u < B; ++u)
      if (at_b(u) != nullptr) use(b0 + u, v[u]);
  }
}

}  // namespace tilert
