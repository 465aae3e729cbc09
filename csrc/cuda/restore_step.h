// Host interface of the CUDA restore_step kernel: raw pointers, no ATen, so the .cu
// compiles on its own (CI runs `nvcc -arch=sm_90 -c` on it).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "float_type.h"

namespace vqfast {
namespace cuda {

// logits (M, V) contiguous; current, seeds (M,). Writes tokens (M,) and nll (M,) (float
// for float32/16/bf16 logits, double for float64). See vqfast.ops.restore_step.
cudaError_t restore_step(const void* logits, FloatType dtype, const int64_t* current, const int64_t* seeds, int64_t M,
                         int64_t V, double threshold, int64_t position, double temperature, int64_t* tokens,
                         void* nll, cudaStream_t stream);

}  // namespace cuda
}  // namespace vqfast
