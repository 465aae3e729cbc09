// Host interface of the CUDA Batch-OMP kernel: raw pointers, no ATen, so the .cu
// compiles on its own (CI runs `nvcc -arch=sm_90 -c` on it).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace vqfast {
namespace cuda {

enum class OmpDType { kFloat32, kFloat64 };

// Largest n_nonzero the kernel keeps in shared memory (the support, its right-hand
// side, the solve vectors); vqfast.ops routes larger requests to Triton.
constexpr int64_t kOmpMaxNonzero = 1024;

// Global scratch holds one s x s Cholesky factor per target of a launch; a batch
// whose factors exceed this budget runs in several launches (B=1e6, s=40 would
// otherwise take 6.4 GB in float32).
constexpr int64_t kOmpWorkspaceBytes = int64_t(256) << 20;

// Targets per launch for factors of s x s elements of elem_bytes each (>= 1).
int64_t omp_batch_per_launch(int64_t B, int64_t s, int64_t elem_bytes);

// Elements (of the dtype) of global scratch the launcher needs.
int64_t omp_workspace_elems(int64_t B, int64_t s, int64_t elem_bytes);

// gram: (N, N) contiguous; xty: (B, N) contiguous; y_norm_sq: (B,). 1 <= s <= min(N,
// kOmpMaxNonzero), B >= 1. tol < 0: no tolerance. Writes coef (B, N), support (B, s)
// (-1 after an early stop) and residual (B,), with the semantics of vqfast.ops.omp.
cudaError_t omp(const void* gram, const void* xty, const void* y_norm_sq, OmpDType dtype, int64_t B, int64_t N,
                int64_t s, double tol, void* workspace, void* coef, int64_t* support, void* residual,
                cudaStream_t stream);

}  // namespace cuda
}  // namespace vqfast
