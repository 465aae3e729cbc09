// ATen bindings of the raw CUDA kernels; compiled only when torch has CUDA.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>
#include <c10/cuda/CUDAGuard.h>

#include "../checks.h"
#include "../ops.h"
#include "nearest_code.h"
#include "omp.h"
#include "decode_attention.h"
#include "restore_step.h"

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
  at::Tensor ws = at::empty({cuda::omp_workspace_elems(B, n_nonzero, xty.element_size())}, xty.options());
  const auto dtype = xty.scalar_type() == at::kDouble ? cuda::OmpDType::kFloat64 : cuda::OmpDType::kFloat32;
  const cudaError_t err = cuda::omp(G.data_ptr(), xty.data_ptr(), ynorm.data_ptr(), dtype, B, N, n_nonzero, tol,
                                    ws.data_ptr(), coef.data_ptr(), support.data_ptr<int64_t>(), residual.data_ptr(),
                                    c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "omp CUDA kernel failed: ", cudaGetErrorString(err));
  return {coef, support, residual};
}

namespace {
cuda::FloatType float_type(at::ScalarType st) {
  switch (st) {
    case at::kDouble:
      return cuda::FloatType::kFloat64;
    case at::kHalf:
      return cuda::FloatType::kFloat16;
    case at::kBFloat16:
      return cuda::FloatType::kBFloat16;
    default:
      TORCH_CHECK(st == at::kFloat, "expected a float32/float64/float16/bfloat16 tensor, got ", st);
      return cuda::FloatType::kFloat32;
  }
}
}  // namespace

std::tuple<at::Tensor, at::Tensor> restore_step_cuda(const at::Tensor& logits_in, const at::Tensor& current_in,
                                                     double threshold, const at::Tensor& seeds_in, int64_t position,
                                                     double temperature) {
  check_restore_step_args(logits_in, current_in, seeds_in, temperature);
  TORCH_CHECK(logits_in.is_cuda(), "restore_step_cuda needs CUDA tensors, got ", logits_in.device());
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous(), current = current_in.contiguous(), seeds = seeds_in.contiguous();
  const int64_t M = logits.size(0), V = logits.size(1);
  at::Tensor tokens = at::empty({M}, current.options());
  at::Tensor nll = at::empty({M}, logits.options().dtype(logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  if (M == 0) return {tokens, nll};
  const cudaError_t err = cuda::restore_step(logits.data_ptr(), float_type(logits.scalar_type()),
                                             current.data_ptr<int64_t>(), seeds.data_ptr<int64_t>(), M, V, threshold,
                                             position, temperature, tokens.data_ptr<int64_t>(), nll.data_ptr(),
                                             c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "restore_step CUDA kernel failed: ", cudaGetErrorString(err));
  return {tokens, nll};
}

at::Tensor decode_attention_cuda(const at::Tensor& q_in, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                 int64_t length, double scale) {
  check_decode_attention_args(q_in, k_cache, v_cache, length);
  TORCH_CHECK(q_in.is_cuda(), "decode_attention_cuda needs CUDA tensors, got ", q_in.device());
  TORCH_CHECK(q_in.size(2) <= cuda::kDecodeAttentionMaxD, "the CUDA kernel supports head size d <= ",
              cuda::kDecodeAttentionMaxD, ", got ", q_in.size(2));
  TORCH_CHECK(k_cache.strides() == v_cache.strides() && k_cache.stride(3) == 1 && k_cache.stride(2) == k_cache.size(3),
              "k_cache and v_cache need equal strides and contiguous (T, d) blocks per (m, h)");
  const c10::cuda::CUDAGuard guard(q_in.device());
  const int64_t max_length = cuda::decode_attention_max_length(float_type(q_in.scalar_type()), q_in.size(2));
  TORCH_CHECK_VALUE(length <= max_length, "the CUDA kernel keeps scores in shared memory: length <= ", max_length,
                    " for this dtype and head size here, got ", length, " (backend='auto' takes Triton)");
  const at::Tensor q = q_in.contiguous();
  at::Tensor out = at::empty_like(q);
  if (q.numel() == 0) return out;
  const cudaError_t err =
      cuda::decode_attention(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), float_type(q.scalar_type()),
                             q.size(0), q.size(1), q.size(2), k_cache.stride(0), k_cache.stride(1), length, scale,
                             out.data_ptr(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "decode_attention CUDA kernel failed: ", cudaGetErrorString(err));
  return out;
}

int64_t decode_attention_cuda_max_length(const at::Tensor& q) {
  TORCH_CHECK(q.is_cuda() && q.dim() == 3, "q must be a CUDA tensor (M, H, d)");
  const c10::cuda::CUDAGuard guard(q.device());
  return cuda::decode_attention_max_length(float_type(q.scalar_type()), q.size(2));
}

}  // namespace vqfast
