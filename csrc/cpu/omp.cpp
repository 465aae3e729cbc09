// Batch-OMP in Gram space on the CPU (Rubinstein, Zibulevsky & Elad 2008): every
// target of the batch in parallel, the support's Cholesky factor grown by one row
// per atom (no least-squares solve from scratch), and nothing of length D after X^T y.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../shared_loops.h"

namespace vqfast {
namespace {

template <typename T>
inline __attribute__((always_inline)) void omp_rows_impl(const T* G, const T* xty, const T* ynorm, int64_t N, int64_t s, T tol, bool use_tol, int64_t b0,
              int64_t b1, T* coef, int64_t* support, T* residual) {
  const T tiny = std::numeric_limits<T>::min(), eps = std::numeric_limits<T>::epsilon();
  std::vector<T> alpha(N), L(s * s), gamma(s), rhs(s), w(s);
  std::vector<int64_t> S(s);
  std::vector<char> chosen(N);
  for (int64_t b = b0; b < b1; ++b) {
    const T* y = xty + b * N;
    std::copy(y, y + N, alpha.begin());
    std::fill(chosen.begin(), chosen.end(), 0);
    int64_t k = 0;
    T explained = 0, energy = 0;  // the stopping rules of vqfast.ops.omp
    while (k < s) {
      int64_t j = -1;
      T best = -1;
      for (int64_t i = 0; i < N; ++i) {  // first index among equal |alpha|
        const T a = chosen[i] ? T(-1) : std::abs(alpha[i]);
        if (a > best) {
          best = a;
          j = i;
        }
      }
      if (j < 0) break;
      const T* gj = G + j * N;
      const T gjj = gj[j];
      if (!(gjj > tiny)) break;  // a zero atom (or a gram that is not X^T X)
      if (k == 0) energy = best * best / gjj;
      if (best * best <= eps * energy * gjj) break;  // residual orthogonal to every atom left
      // New Cholesky row: L w = G[S, j], L_kk = sqrt(G_jj - |w|^2).
      const T wn = forward_solve(L.data(), s, k, [&](int64_t r) { return gj[S[r]]; }, w.data());
      const T lkk = gjj - wn;
      if (lkk <= 16 * eps * gjj) break;  // x_j lies in the support's span
      for (int64_t c = 0; c < k; ++c) L[k * s + c] = w[c];
      L[k * s + k] = std::sqrt(lkk);
      S[k] = j;
      chosen[j] = 1;
      rhs[k] = y[j];
      ++k;
      // gamma = (L L^T)^-1 xty_S by two triangular solves.
      forward_solve(L.data(), s, k, [&](int64_t r) { return rhs[r]; }, w.data());
      backward_solve(L.data(), s, k, w.data(), gamma.data());
      // alpha = xty - G[:, S] gamma, from G's rows (G is symmetric).
      std::copy(y, y + N, alpha.begin());
      explained = 0;
      for (int64_t r = 0; r < k; ++r) {
        const T g = gamma[r];
        const T* row = G + S[r] * N;
        for (int64_t i = 0; i < N; ++i) alpha[i] -= g * row[i];
        explained += g * rhs[r];
      }
      if (use_tol && ynorm[b] - explained <= tol) break;
    }
    T* cb = coef + b * N;
    int64_t* sb = support + b * s;
    for (int64_t i = 0; i < N; ++i) cb[i] = 0;
    for (int64_t r = 0; r < s; ++r) sb[r] = r < k ? S[r] : -1;
    for (int64_t r = 0; r < k; ++r) cb[S[r]] = gamma[r];
    residual[b] = ynorm[b] - explained;
  }
}

// The O(N k) residual update dominates: compile it for AVX-512, AVX2 and the baseline
// ISA, picked at run time (GCC/Clang function multiversioning).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define VQ_OMP_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VQ_OMP_CLONES
#endif

VQ_OMP_CLONES void omp_rows(const double* G, const double* xty, const double* ynorm, int64_t N, int64_t s, double tol,
                            bool use_tol, int64_t b0, int64_t b1, double* coef, int64_t* support, double* residual) {
  omp_rows_impl<double>(G, xty, ynorm, N, s, tol, use_tol, b0, b1, coef, support, residual);
}

VQ_OMP_CLONES void omp_rows(const float* G, const float* xty, const float* ynorm, int64_t N, int64_t s, float tol,
                            bool use_tol, int64_t b0, int64_t b1, float* coef, int64_t* support, float* residual) {
  omp_rows_impl<float>(G, xty, ynorm, N, s, tol, use_tol, b0, b1, coef, support, residual);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> omp_cpu(const at::Tensor& gram_in, const at::Tensor& xty_in,
                                                       int64_t n_nonzero, double tol, const at::Tensor& ynorm_in) {
  check_omp_args(gram_in, xty_in, n_nonzero, ynorm_in);
  check_cpu("omp_cpu", {&gram_in, &xty_in, &ynorm_in});
  const at::Tensor G = gram_in.contiguous(), xty = xty_in.contiguous(), ynorm = ynorm_in.contiguous();
  const int64_t B = xty.size(0), N = G.size(0);
  at::Tensor coef = at::empty({B, N}, xty.options());
  at::Tensor support = at::empty({B, n_nonzero}, xty.options().dtype(at::kLong));
  at::Tensor residual = at::empty({B}, xty.options());
  const bool use_tol = tol >= 0;
  AT_DISPATCH_FLOATING_TYPES(xty.scalar_type(), "omp_cpu", [&] {
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      omp_rows(G.data_ptr<scalar_t>(), xty.data_ptr<scalar_t>(), ynorm.data_ptr<scalar_t>(), N, n_nonzero,
                         static_cast<scalar_t>(tol), use_tol, b0, b1, coef.data_ptr<scalar_t>(),
                         support.data_ptr<int64_t>(), residual.data_ptr<scalar_t>());
    });
  });
  return {coef, support, residual};
}

}  // namespace vqfast
