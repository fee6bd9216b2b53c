// What every task function receives. The generated dispatch (kernel.cu) calls
// task_<kind><statics>(p, st, args, rec, task, smem, red, ring): Params, the step, the
// record's arguments as the kind's struct (kernel.cu: <Kind>Args, from the kind's record
// in ir/kinds.py), the record, the task id, the task's dynamic shared memory (after the
// ring), kCWarps floats for reductions, the weight ring.
// From kernel.cu: kArg0.
#pragma once
#include "memory.cuh"

namespace tilert {

// The step a CTA is in; every thread holds the same copy.
struct Step {
  int i;           // step of this launch
  int pos;         // cache position: p.pos + i
  int token;       // the token this step feeds
  unsigned epoch;  // steps run on these counters, this one included
};

// The record's arguments (words kArg0 on) as the kind's struct: its fields, in order.
template <class Args>
__device__ __forceinline__ const Args& args_of(const long long* rec) {
  static_assert(sizeof(Args) % sizeof(long long) == 0, "arguments are int64 words");
  static_assert(kArg0 + sizeof(Args) / sizeof(long long) <= kRecord, "arguments fit the record");
  return *reinterpret_cast<const Args*>(rec + kArg0);
}

}  // namespace tilert
