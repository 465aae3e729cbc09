// Host interface of the CUDA restoration kernels (restore_step, decode_attention): raw
// pointers, no ATen, so the .cu compiles on its own (CI runs `nvcc -arch=sm_90 -c`).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace vqfast {
namespace cuda {

enum class FloatType { kFloat32, kFloat64, kFloat16, kBFloat16 };

// logits (M, V) contiguous; current, seeds (M,). Writes tokens (M,) and nll (M,) (float
// for float32/16/bf16 logits, double for float64). See vqfast.ops.restore_step.
cudaError_t restore_step(const void* logits, FloatType dtype, const int64_t* current, const int64_t* seeds, int64_t M,
                         int64_t V, double threshold, int64_t position, double temperature, int64_t* tokens,
                         void* nll, cudaStream_t stream);

// q (M, H, d) contiguous; k, v caches (M, H, T, d) with strides (s0, s1, d, 1); out (M, H, d).
// d <= kDecodeAttentionMaxD.
constexpr int64_t kDecodeAttentionMaxD = 256;
cudaError_t decode_attention(const void* q, const void* k, const void* v, FloatType dtype, int64_t M, int64_t H,
                             int64_t d, int64_t cache_s0, int64_t cache_s1, int64_t length, double scale, void* out,
                             cudaStream_t stream);

}  // namespace cuda
}  // namespace vqfast
