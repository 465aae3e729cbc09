// ATen-facing entry points of vqfast._C, one per (op, backend).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <tuple>
#include <vector>

namespace vqfast {

// z: (N, D), codebook: (K, D), same float dtype (float32/float16/bfloat16).
// Returns indices (N, k) int64 and squared L2 distances (N, k) float32, ascending,
// ties broken by lower index. isa: "auto" or one of cpu_isas().
std::tuple<at::Tensor, at::Tensor> nearest_code_cpu(const at::Tensor& z, const at::Tensor& codebook, int64_t k,
                                                    const std::string& isa);
// Batch OMP in Gram space. gram: (N, N), xty: (B, N), y_norm_sq: (B,), float32 or
// float64; tol < 0 means none. Returns coef (B, N), support (B, n_nonzero) int64
// (-1 after an early stop) and residual_norm_sq (B,).
std::tuple<at::Tensor, at::Tensor, at::Tensor> omp_cpu(const at::Tensor& gram, const at::Tensor& xty,
                                                       int64_t n_nonzero, double tol, const at::Tensor& y_norm_sq);
// One restoration step: logits (M, V) float32/float64, current and seeds (M,) int64.
// Returns tokens (M,) int64 and nll (M,) in the logits' dtype.
std::tuple<at::Tensor, at::Tensor> restore_step_cpu(const at::Tensor& logits, const at::Tensor& current,
                                                    double threshold, const at::Tensor& seeds, int64_t position,
                                                    double temperature);
// Single-query attention: q (M, H, d), caches (M, H, T, d) of which the first `length`
// positions count. Returns (M, H, d).
at::Tensor decode_attention_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                int64_t length, double scale);
// Per row n of z (N, D): the index of the code at 0-based position rank[n] (int64, in
// [0, K)) of the row's ascending (squared L2 distance, index) order over codebook (K, D).
// z and codebook float32 or float64. Returns (N,) int64.
at::Tensor code_at_rank_cpu(const at::Tensor& z, const at::Tensor& codebook, const at::Tensor& rank);
// CPU instruction-set variants this machine can run, best first.
std::vector<std::string> cpu_isas();
// The variant nearest_code_cpu(..., "auto") runs for rows of D values and k winners.
std::string nearest_code_cpu_isa(int64_t D, int64_t k);

#ifdef WITH_CUDA
std::tuple<at::Tensor, at::Tensor> restore_step_cuda(const at::Tensor& logits, const at::Tensor& current,
                                                     double threshold, const at::Tensor& seeds, int64_t position,
                                                     double temperature);
at::Tensor decode_attention_cuda(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                 int64_t length, double scale);
// The longest length decode_attention_cuda takes for q's dtype and head size on q's device.
int64_t decode_attention_cuda_max_length(const at::Tensor& q);
std::tuple<at::Tensor, at::Tensor> nearest_code_cuda(const at::Tensor& z, const at::Tensor& codebook, int64_t k);
std::tuple<at::Tensor, at::Tensor, at::Tensor> omp_cuda(const at::Tensor& gram, const at::Tensor& xty,
                                                        int64_t n_nonzero, double tol, const at::Tensor& y_norm_sq);
#endif

}  // namespace vqfast
