// ATen bindings of the raw CUDA kernels; compiled only when torch has CUDA.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>
#include <c10/cuda/CUDAGuard.h>

#include "../checks.h"
#include "../ops.h"
#include "nearest_code.h"

namespace vqfast {

std::tuple<at::Tensor, at::Tensor> nearest_code_cuda(const at::Tensor& z_in, const at::Tensor& cb_in, int64_t k) {
  check_nearest_code_args(z_in, cb_in, k);
  TORCH_CHECK(z_in.is_cuda(), "nearest_code_cuda needs CUDA tensors, got ", z_in.device());
  TORCH_CHECK(k <= cuda::kNearestCodeMaxK, "the CUDA kernel supports k <= ", cuda::kNearestCodeMaxK, ", got ", k);
  TORCH_CHECK(cb_in.size(0) <= std::numeric_limits<int32_t>::max(), "codebook is too large (K >= 2^31)");
  const c10::cuda::CUDAGuard guard(z_in.device());
  // Rows may be strided; the kernel needs unit stride along D only.
  const at::Tensor z = z_in.stride(1) == 1 ? z_in : z_in.contiguous();
  const at::Tensor cb = cb_in.contiguous();
  const int64_t N = z.size(0), K = cb.size(0), D = z.size(1);
  at::Tensor idx = at::empty({N, k}, z.options().dtype(at::kLong));
  at::Tensor dist = at::empty({N, k}, z.options().dtype(at::kFloat));
  if (N == 0) return {idx, dist};
  at::Tensor ws = at::empty({cuda::nearest_code_workspace_floats(K, D)}, z.options().dtype(at::kFloat));
  const auto dtype = z.scalar_type() == at::kFloat ? cuda::DType::kFloat32
                     : z.scalar_type() == at::kHalf ? cuda::DType::kFloat16
                                                    : cuda::DType::kBFloat16;
  const cudaError_t err =
      cuda::nearest_code(z.data_ptr(), z.stride(0), cb.data_ptr(), dtype, N, K, D, k, ws.data_ptr<float>(),
                         idx.data_ptr<int64_t>(), dist.data_ptr<float>(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "nearest_code CUDA kernel failed: ", cudaGetErrorString(err));
  return {idx, dist};
}

}  // namespace vqfast
