// Argument checks shared by the ATen-facing entry points (CPU and CUDA bindings).
// The Python layer validates first and raises ValueError/TypeError naming the
// argument; these checks guard direct calls into vqfast._C.
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>

namespace vqfast {

// The CPU kernels read data_ptr() as host memory: a CUDA tensor handed to a raw
// `_C.*_cpu` entry point would be read through a device address.
inline void check_cpu(const char* fn, std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors)
    TORCH_CHECK_VALUE(t->device().is_cpu(), fn, " needs CPU tensors, got one on ", t->device());
}

inline void check_nearest_code_args(const at::Tensor& z, const at::Tensor& codebook, int64_t k) {
  TORCH_CHECK(z.dim() == 2, "z must be 2-D (N, D), got shape ", z.sizes());
  TORCH_CHECK(codebook.dim() == 2, "codebook must be 2-D (K, D), got shape ", codebook.sizes());
  TORCH_CHECK(z.size(1) == codebook.size(1), "z has D=", z.size(1), " but codebook has D=",
              codebook.size(1));
  TORCH_CHECK(codebook.size(0) > 0, "codebook must have at least one code (K=0)");
  TORCH_CHECK(z.size(1) > 0, "z and codebook must have D >= 1 (the kernels divide by D)");
  TORCH_CHECK(k >= 1 && k <= codebook.size(0), "k must be in [1, K=", codebook.size(0), "], got ", k);
  TORCH_CHECK(z.scalar_type() == codebook.scalar_type(), "z and codebook must share a dtype, got ",
              z.scalar_type(), " and ", codebook.scalar_type());
  const auto st = z.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16,
              "z and codebook must be float32, float16 or bfloat16, got ", st);
  TORCH_CHECK(z.device() == codebook.device(), "z is on ", z.device(), " but codebook is on ",
              codebook.device());
}

inline void check_omp_args(const at::Tensor& gram, const at::Tensor& xty, int64_t n_nonzero,
                           const at::Tensor& y_norm_sq) {
  TORCH_CHECK(gram.dim() == 2 && gram.size(0) == gram.size(1), "gram must be (N, N), got ", gram.sizes());
  TORCH_CHECK(xty.dim() == 2 && xty.size(1) == gram.size(0), "xty must be (B, N=", gram.size(0), "), got ",
              xty.sizes());
  TORCH_CHECK(y_norm_sq.dim() == 1 && y_norm_sq.size(0) == xty.size(0), "y_norm_sq must be (B,), got ",
              y_norm_sq.sizes());
  TORCH_CHECK(n_nonzero >= 1 && n_nonzero <= gram.size(0), "n_nonzero must be in [1, N=", gram.size(0), "], got ",
              n_nonzero);
  const auto st = gram.scalar_type();
  TORCH_CHECK((st == at::kFloat || st == at::kDouble) && xty.scalar_type() == st && y_norm_sq.scalar_type() == st,
              "gram, xty and y_norm_sq must share a dtype, float32 or float64");
  TORCH_CHECK(gram.device() == xty.device() && xty.device() == y_norm_sq.device(),
              "gram, xty and y_norm_sq must be on one device");
}

inline void check_restore_step_args(const at::Tensor& logits, const at::Tensor& current, const at::Tensor& seeds,
                                    double temperature) {
  TORCH_CHECK(logits.dim() == 2 && logits.size(1) >= 1, "logits must be (M, V) with V >= 1, got ", logits.sizes());
  TORCH_CHECK(current.dim() == 1 && current.size(0) == logits.size(0), "current must be (M=", logits.size(0),
              ",), got ", current.sizes());
  TORCH_CHECK(seeds.dim() == 1 && seeds.size(0) == logits.size(0), "seeds must be (M=", logits.size(0), ",), got ",
              seeds.sizes());
  TORCH_CHECK(current.scalar_type() == at::kLong && seeds.scalar_type() == at::kLong, "current and seeds must be int64");
  TORCH_CHECK(temperature > 0, "temperature must be > 0, got ", temperature);
  TORCH_CHECK(logits.device() == current.device() && logits.device() == seeds.device(),
              "logits, current and seeds must be on one device");
}

inline void check_decode_attention_args(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                        int64_t length) {
  TORCH_CHECK(q.dim() == 3, "q must be (M, H, d), got ", q.sizes());
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.sizes() == v_cache.sizes(), "k_cache and v_cache must be (M, H, T, d), got ",
              k_cache.sizes(), " and ", v_cache.sizes());
  TORCH_CHECK(k_cache.size(0) == q.size(0) && k_cache.size(1) == q.size(1) && k_cache.size(3) == q.size(2),
              "k_cache ", k_cache.sizes(), " does not match q ", q.sizes());
  TORCH_CHECK(length >= 1 && length <= k_cache.size(2), "length must be in [1, T=", k_cache.size(2), "], got ", length);
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && q.scalar_type() == v_cache.scalar_type(),
              "q, k_cache and v_cache must share a dtype");
  TORCH_CHECK(q.device() == k_cache.device() && q.device() == v_cache.device(), "q and the caches must be on one device");
}

}  // namespace vqfast
