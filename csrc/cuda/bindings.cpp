// ATen bindings of the raw CUDA kernels; compiled only when torch has CUDA.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>
#include <c10/cuda/CUDAGuard.h>

#include "../checks.h"
#include "../ops.h"
#include "nearest_code.h"
#include "omp.h"

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

std::tuple<at::Tensor, at::Tensor, at::Tensor> omp_cuda(const at::Tensor& gram_in, const at::Tensor& xty_in,
                                                        int64_t n_nonzero, double tol, const at::Tensor& ynorm_in) {
  check_omp_args(gram_in, xty_in, n_nonzero, ynorm_in);
  TORCH_CHECK(xty_in.is_cuda(), "omp_cuda needs CUDA tensors, got ", xty_in.device());
  TORCH_CHECK(n_nonzero <= cuda::kOmpMaxNonzero, "the CUDA kernel supports n_nonzero <= ", cuda::kOmpMaxNonzero,
              ", got ", n_nonzero);
  const c10::cuda::CUDAGuard guard(xty_in.device());
  const at::Tensor G = gram_in.contiguous(), xty = xty_in.contiguous(), ynorm = ynorm_in.contiguous();
  const int64_t B = xty.size(0), N = G.size(0);
  at::Tensor coef = at::empty({B, N}, xty.options());
  at::Tensor support = at::empty({B, n_nonzero}, xty.options().dtype(at::kLong));
  at::Tensor residual = at::empty({B}, xty.options());
  if (B == 0) return {coef, support, residual};
  at::Tensor ws = at::empty({cuda::omp_workspace_elems(B, n_nonzero)}, xty.options());
  const auto dtype = xty.scalar_type() == at::kDouble ? cuda::OmpDType::kFloat64 : cuda::OmpDType::kFloat32;
  const cudaError_t err = cuda::omp(G.data_ptr(), xty.data_ptr(), ynorm.data_ptr(), dtype, B, N, n_nonzero, tol,
                                    ws.data_ptr(), coef.data_ptr(), support.data_ptr<int64_t>(), residual.data_ptr(),
                                    c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "omp CUDA kernel failed: ", cudaGetErrorString(err));
  return {coef, support, residual};
}

}  // namespace vqfast
