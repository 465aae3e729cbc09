// Host interface of the CUDA nearest-codebook kernels: raw pointers, no ATen, so the
// .cu compiles on its own (CI runs `nvcc -arch=sm_90 -c` on it).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace vqfast {
namespace cuda {

enum class DType { kFloat32, kFloat16, kBFloat16 };

// Largest k the CUDA kernel keeps per thread; vqfast.ops routes larger k elsewhere.
constexpr int64_t kNearestCodeMaxK = 64;

// Floats of scratch the launcher needs: codebook mean, centred float32 codebook, norms.
int64_t nearest_code_workspace_floats(int64_t K, int64_t D);

// z: (N, D) rows `z_row_stride` elements apart, unit stride along D.
// codebook: (K, D) contiguous, same dtype. 1 <= k <= kNearestCodeMaxK, N >= 1.
// Writes out_idx (N, k) and out_dist (N, k), ascending squared L2, ties by lower
// index; distances recomputed exactly for the winners. Returns the first CUDA error.
cudaError_t nearest_code(const void* z, int64_t z_row_stride, const void* codebook, DType dtype, int64_t N,
                         int64_t K, int64_t D, int64_t k, float* workspace, int64_t* out_idx, float* out_dist,
                         cudaStream_t stream);

}  // namespace cuda
}  // namespace vqfast
