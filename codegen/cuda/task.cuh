// What every task function receives besides Params and its arguments: the step.
// The generated dispatch (kernel.cu) calls task_<kind><statics>(p, st, args, rec, task,
// smem, red, ring): Params, the step, the record's arguments from kArg0 on, the record, the
// task id, the task's dynamic shared memory (after the ring), kCWarps floats for
// reductions, the weight ring.
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

}  // namespace tilert
