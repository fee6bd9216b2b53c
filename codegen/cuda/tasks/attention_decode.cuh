// attention_decode: one split of one kv group's attention over the KV cache, at this step.
// From kernel.cu: kConsumers, kCWarps, kFlags, kAttnBlock, Params (act, w, counters).
#pragma once
#include "../attention.cuh"
#include "../flags.cuh"
#include "../profile.cuh"
#include "../reduce.cuh"
#include "../ring.cuh"
#include "../task.cuh"

namespace tilert {

// attention_decode for kv head g, split s (of NSPLIT) of the cache rows of earlier steps;
// the last split also takes this step's row and writes it to the cache. q/k head norm
// (qwen3) and RoPE are applied here, on the raw stacked qkv vector. Each split writes,
// per q head of its group, (o[HD], max, sum); the split of g that arrives last combines.
// Every global read of a phase is issued at once (a block of the split's cache rows goes
// to shared memory), so a task costs a few L2 round trips, not one per row. A split's rows
// come in blocks of at most kAttnBlock (online softmax across blocks), so its shared
// memory does not grow with max_seq_len: that memory is the weight ring's.
template <int HD, int G, int H, int KV, int S, int NSPLIT, int QKN>
__device__ void task_attention_decode(const Params& p, const Step& st, const AttentionDecodeArgs& a,
                                      const long long*, int task, float* smem, float*, Ring&) {
  constexpr int kSplitRows = (S - 1 + NSPLIT - 1) / NSPLIT + 1;  // rows a split may hold
  constexpr int kChunk = kSplitRows < kAttnBlock ? kSplitRows : kAttnBlock;  // rows a block
  __shared__ float s_max[G], s_sum[G], s_scale[G];
  __shared__ int s_last;
  float* q = smem;              // [G][HD]: this group's q heads, normed, roped, scaled
  float* kn = q + G * HD;       // [HD]: this step's k, normed and roped
  float* vn = kn + HD;          // [HD]: this step's v
  float* qg = vn + HD;          // [HD]: q norm weights
  float* kg = qg + HD;          // [HD]: k norm weights
  // scores; later the combine's split weights. Rounded up: keeps ks 16-byte aligned
  constexpr int kScores = ((G * kChunk > NSPLIT * G ? G * kChunk : NSPLIT * G) + 3) / 4 * 4;
  float* sc = kg + HD;          // [G][kChunk]: scores, then probabilities; then [NSPLIT][G]
  constexpr int kP = HD + 4;    // padded row stride of k: a thread's float4 reads of its
                                // row do not conflict with its neighbours' rows
  float* ks = sc + kScores;     // [kChunk][kP]: the split's cache rows (k), then partials
  float* vs = ks + kChunk * kP; // [kChunk][HD]: (v)
  // ks and vs hold a block of cache rows, then ks the combine's partials
  constexpr int kPart = NSPLIT * G * (HD + 2);
  constexpr int kStaged = kChunk * (kP + HD) > kPart ? kChunk * (kP + HD) : kPart;
  static_assert(G * HD + 4 * HD + kScores + kStaged <= kScratchFloats,
                "attention's shared memory is more than codegen's scratch_floats");
  const int g = (int)a.head, s = (int)a.split;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const bool last = s == NSPLIT - 1;
  int lo, hi;
  split_rows<NSPLIT>(st.pos, s, lo, hi);
  const int old_rows = hi - lo, rows = old_rows + (last ? 1 : 0);
  float* kc = p.act + a.k_cache + (long long)g * S * HD;
  float* vc = p.act + a.v_cache + (long long)g * S * HD;
  // Rows [b0, b0 + kChunk) of the split's earlier-step rows into ks / vs (no check: earlier
  // steps' rows), as this thread's cp.asyncs.
  const auto load_block = [&](int b0) {
    const int n = min(kChunk, old_rows - b0);
    const float4* k4 = reinterpret_cast<const float4*>(kc + (long long)(lo + b0) * HD);
    const float4* v4 = reinterpret_cast<const float4*>(vc + (long long)(lo + b0) * HD);
    for (int i = threadIdx.x; i < n * HD / 4; i += kConsumers) {
      cp_async16(ks + i / (HD / 4) * kP + i % (HD / 4) * 4, k4 + i);
      cp_async16(reinterpret_cast<float4*>(vs) + i, v4 + i);
    }
  };
  {  // one phase of loads: the first block of cache rows, this step's q/k/v (into
     // registers, made fresh together), the norm weights
    load_block(0);
    constexpr int kQIt = (G * HD + kConsumers - 1) / kConsumers;
    constexpr int kHIt = (HD + kConsumers - 1) / kConsumers;
    const float* qkv = p.act + a.qkv;
    // Slot it < kQIt: q element i of the group; then k's, then v's.
    const auto at = [&](int it) -> const float* {
      if (it < kQIt) {
        const int i = threadIdx.x + it * kConsumers;
        return i < G * HD ? qkv + g * G * HD + i : nullptr;
      }
      const bool is_v = it >= kQIt + kHIt;
      const int i = threadIdx.x + (it - kQIt - (is_v ? kHIt : 0)) * kConsumers;
      return i < HD ? qkv + (H + (is_v ? KV : 0) + g) * HD + i : nullptr;
    };
    float r[kQIt + 2 * kHIt];
#pragma unroll
    for (int it = 0; it < kQIt + 2 * kHIt; ++it)
      if (at(it) != nullptr) r[it] = ld_act(at(it));
    if (QKN)
      for (int i = threadIdx.x; i < HD; i += kConsumers) {
        qg[i] = __bfloat162float(p.w[a.w_q_gamma + i]);
        kg[i] = __bfloat162float(p.w[a.w_k_gamma + i]);
      }
    make_fresh(p, r, at, st.epoch & 1u, task);
#pragma unroll
    for (int it = 0; it < kQIt + 2 * kHIt; ++it) {
      if (at(it) == nullptr) continue;
      const int i = threadIdx.x + (it < kQIt ? it : (it - kQIt) % kHIt) * kConsumers;
      (it < kQIt ? q : it < kQIt + kHIt ? kn : vn)[i] = r[it];
    }
    cp_async_wait_all();
  }
  sync_consumers();
  mark_loaded();
  if (QKN) {  // warp w normalises head w: the G q heads, then k as head G (qwen3)
    for (int hh = warp; hh <= G; hh += kCWarps) {
      float* v = hh < G ? q + hh * HD : kn;
      const float* gamma = hh < G ? qg : kg;
      float ss = 0.f;
      for (int d = lane; d < HD; d += 32) ss += v[d] * v[d];
      const float r = 1.f / sqrtf(warp_sum(ss) / HD + kEps);
      for (int d = lane; d < HD; d += 32) v[d] = v[d] * r * gamma[d];
    }
    sync_consumers();
  }
  rope<HD, G>(q, kn, st.pos);
  if (last)
    for (int i = threadIdx.x; i < HD; i += kConsumers) {
      kc[(long long)st.pos * HD + i] = kn[i];
      vc[(long long)st.pos * HD + i] = vn[i];
    }
  // Per head i: the running max s_max and sum s_sum of exp(score - max) over the blocks so
  // far, and this thread's outputs (head, d) = t / HD, t % HD for t = threadIdx.x + u
  // kConsumers, sum of exp(score - max) v. A block rescales both by exp(old - new max)
  // (0 for the first: with one block, the sums are those of a single pass, to the bit).
  constexpr int kOut = (G * HD + kConsumers - 1) / kConsumers;
  float acc[kOut];
#pragma unroll
  for (int u = 0; u < kOut; ++u) acc[u] = 0.f;
  if (threadIdx.x < G) {
    s_max[threadIdx.x] = -INFINITY;
    s_sum[threadIdx.x] = 0.f;
  }
  for (int b0 = 0; b0 < rows; b0 += kChunk) {
    const int n = min(kChunk, rows - b0);
    if (b0 > 0) {
      sync_consumers();  // every thread is done with the previous block
      load_block(b0);
      cp_async_wait_all();
    }
    if (last && b0 + n == rows)  // this step's row joins the last block
      for (int i = threadIdx.x; i < HD; i += kConsumers) {
        ks[(n - 1) * kP + i] = kn[i];
        vs[(n - 1) * HD + i] = vn[i];
      }
    sync_consumers();
    for (int t = threadIdx.x; t < G * n; t += kConsumers) {  // a thread per (head, row)
      const int i = t / n, j = t % n;
      const float4* qi = reinterpret_cast<const float4*>(q + i * HD);
      const float4* kj = reinterpret_cast<const float4*>(ks + j * kP);
      float acc4 = 0.f;
#pragma unroll 4
      for (int d = 0; d < HD / 4; ++d) {
        const float4 a4 = qi[d], b4 = kj[d];
        acc4 += a4.x * b4.x + a4.y * b4.y + a4.z * b4.z + a4.w * b4.w;
      }
      sc[i * kChunk + j] = acc4;
    }
    sync_consumers();
    for (int i = warp; i < G; i += kCWarps) {  // softmax statistics, a warp per head
      float m = -INFINITY;
      for (int j = lane; j < n; j += 32) m = fmaxf(m, sc[i * kChunk + j]);
      m = fmaxf(warp_max(m), s_max[i]);
      float l = 0.f;
      for (int j = lane; j < n; j += 32) {
        const float e = expf(sc[i * kChunk + j] - m);
        sc[i * kChunk + j] = e;
        l += e;
      }
      l = warp_sum(l);
      if (lane == 0) {
        const float scale = expf(s_max[i] - m);  // 0 for the first block (-inf)
        s_scale[i] = scale;
        s_sum[i] = s_sum[i] * scale + l;
        s_max[i] = m;
      }
    }
    sync_consumers();
#pragma unroll
    for (int u = 0; u < kOut; ++u) {
      const int t = threadIdx.x + u * kConsumers;
      if (t >= G * HD) continue;
      const int i = t / HD, d = t % HD;
      float o = acc[u] * s_scale[i];
      for (int j = 0; j < n; ++j) o += sc[i * kChunk + j] * vs[j * HD + d];
      acc[u] = o;
    }
  }
  // The partials. With flags they carry the step's parity and the last split (the group's
  // highest task id, so no other split of g comes after it on any SM) combines them,
  // polling for each; a split without rows writes max -1e30, not -inf (which the flag bit
  // would turn into a NaN). Without flags, the split that arrives last combines.
  const unsigned par = st.epoch & 1u;
  float* part = p.act + a.part + (long long)(g * NSPLIT + s) * G * (HD + 2);
#pragma unroll
  for (int u = 0; u < kOut; ++u) {
    const int t = threadIdx.x + u * kConsumers;
    if (t < G * HD) part[t / HD * (HD + 2) + t % HD] = flagged(acc[u], par);
  }
  if (threadIdx.x < G) {
    part[threadIdx.x * (HD + 2) + HD] = flagged(kFlags ? fmaxf(s_max[threadIdx.x], -1e30f)
                                                       : s_max[threadIdx.x], par);
    part[threadIdx.x * (HD + 2) + HD + 1] = flagged(s_sum[threadIdx.x], par);
  }
  sync_consumers();
  mark_computed();
  if (kFlags) {
    if (!last) return;
  } else {
    if (threadIdx.x == 0) {  // release our partial, count the arrivals of g's splits
      __threadfence();
      const unsigned seen = atomicAdd(p.counters + a.arrive, 1u) + 1u;
      __threadfence();
      s_last = seen == st.epoch * NSPLIT;
    }
    sync_consumers();
    if (!s_last) return;
  }
  combine_splits<HD, G, NSPLIT>(p, a, g, ks, sc, s_sum, par, task);
}

}  // namespace tilert
