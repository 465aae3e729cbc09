// Host interface of the CUDA decode_attention kernel: raw pointers, no ATen, so the .cu
// compiles on its own (CI runs `nvcc -arch=sm_90 -c` on it).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "float_type.h"

namespace vqfast {
namespace cuda {

// q (M, H, d) contiguous; k, v caches (M, H, T, d) with strides (s0, s1, d, 1); out (M, H, d).
// d <= kDecodeAttentionMaxD.
constexpr int64_t kDecodeAttentionMaxD = 256;
// The longest `length` the kernel takes for this dtype and head size on the current
// device (scores in shared memory); vqfast.ops sends longer caches to Triton.
int64_t decode_attention_max_length(FloatType dtype, int64_t d);
cudaError_t decode_attention(const void* q, const void* k, const void* v, FloatType dtype, int64_t M, int64_t H,
                             int64_t d, int64_t cache_s0, int64_t cache_s1, int64_t length, double scale, void* out,
                             cudaStream_t stream);

}  // namespace cuda
}  // namespace vqfast
