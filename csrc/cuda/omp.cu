// Batch-OMP on the GPU: one block per target. Each iteration streams the support's
// Gram rows once (coalesced: G is symmetric, so row S_r is column S_r) to form the
// correlations alpha = X^T y - G[:, S] gamma on the fly and reduce them to the next
// atom; thread 0 grows the support's Cholesky factor by one row and solves for gamma
// (s is small: Magnetic Tile uses 7-10 atoms, MVTec AD 17-40). Nothing of length D is
// touched after X^T y, and alpha is never stored.
#include <cfloat>
#include <cmath>

#include "../shared_loops.h"
#include "common.cuh"
#include "omp.h"

namespace vqfast {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
struct Limits;
template <>
struct Limits<float> {
  static constexpr float tiny = FLT_MIN, eps = FLT_EPSILON;
};
template <>
struct Limits<double> {
  static constexpr double tiny = DBL_MIN, eps = DBL_EPSILON;
};

// (score, index) order of the selection: larger |alpha| first, then the lower index.
template <typename T>
__device__ __forceinline__ bool ahead(T v, int32_t i, T bv, int32_t bi) {
  return v > bv || (v == bv && i < bi);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) omp_kernel(const T* __restrict__ G, const T* __restrict__ xty,
                                                       const T* __restrict__ ynorm, int32_t N, int32_t s, T tol,
                                                       bool use_tol, T* __restrict__ Lws, T* __restrict__ coef,
                                                       int64_t* __restrict__ support, T* __restrict__ residual) {
  extern __shared__ unsigned char smem_raw[];
  T* gamma = reinterpret_cast<T*>(smem_raw);
  T* rhs = gamma + s;
  T* w = rhs + s;
  int32_t* S = reinterpret_cast<int32_t*>(w + s);
  __shared__ T red_v[kThreads / 32];
  __shared__ int32_t red_i[kThreads / 32];
  __shared__ int32_t k_sh;
  __shared__ bool stop_sh;
  __shared__ T explained_sh, energy_sh;  // the stopping rules of vqfast.ops.omp

  const int64_t b = blockIdx.x;
  const T* y = xty + b * N;
  T* L = Lws + b * int64_t(s) * s;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  if (tid == 0) {
    k_sh = 0;
    stop_sh = false;
    explained_sh = T(0);
    energy_sh = T(0);
  }
  __syncthreads();

  while (true) {
    const int32_t k = k_sh;
    if (stop_sh || k >= s) break;
    // Next atom: the largest |alpha_i| among atoms not yet chosen; ties to the lower index.
    T bv = T(-1);
    int32_t bi = -1;
    for (int32_t i = tid; i < N; i += kThreads) {
      T a = y[i];
      bool chosen = false;
      for (int32_t r = 0; r < k; ++r) {
        const int32_t sr = S[r];
        a -= gamma[r] * G[int64_t(sr) * N + i];
        chosen |= sr == i;
      }
      const T score = chosen ? T(-1) : fabs(a);
      if (ahead(score, i, bv, bi)) {
        bv = score;
        bi = i;
      }
    }
    shfl_select<16>(bv, bi, ahead<T>);
    if (lane == 0) {
      red_v[warp] = bv;
      red_i[warp] = bi;
    }
    __syncthreads();
    if (tid == 0) {
      for (int wi = 1; wi < kThreads / 32; ++wi)
        if (ahead(red_v[wi], red_i[wi], bv, bi)) {
          bv = red_v[wi];
          bi = red_i[wi];
        }
      const T* gj = G + int64_t(bi < 0 ? 0 : bi) * N;
      const T gjj = bi < 0 ? T(0) : gj[bi];
      bool stop = bi < 0 || !(gjj > Limits<T>::tiny);  // no atom left, or a zero atom
      if (!stop && k == 0) energy_sh = bv * bv / gjj;
      stop = stop || bv * bv <= Limits<T>::eps * energy_sh * gjj;  // residual orthogonal to every atom left
      if (!stop) {
        const int32_t j = bi;
        // New Cholesky row: L w = G[S, j], L_kk = sqrt(G_jj - |w|^2).
        const T wn = forward_solve(L, s, k, [&](int32_t r) { return gj[S[r]]; }, w);
        const T lkk = gjj - wn;
        stop = lkk <= 16 * Limits<T>::eps * gjj;  // x_j lies in the support's span
        if (!stop) {
          for (int32_t c = 0; c < k; ++c) L[k * s + c] = w[c];
          L[k * s + k] = sqrt(lkk);
          S[k] = j;
          rhs[k] = y[j];
          const int32_t kk = k + 1;
          // gamma = (L L^T)^-1 xty_S by two triangular solves.
          forward_solve(L, s, kk, [&](int32_t r) { return rhs[r]; }, w);
          backward_solve(L, s, kk, w, gamma);
          T explained = 0;
          for (int32_t r = 0; r < kk; ++r) explained += gamma[r] * rhs[r];
          explained_sh = explained;
          k_sh = kk;
          stop = use_tol && ynorm[b] - explained <= tol;
        }
      }
      stop_sh = stop;
    }
    __syncthreads();
  }

  const int32_t k = k_sh;
  for (int32_t i = tid; i < N; i += kThreads) {
    T c = 0;
    for (int32_t r = 0; r < k; ++r)
      if (S[r] == i) c = gamma[r];
    coef[b * N + i] = c;
  }
  for (int32_t r = tid; r < s; r += kThreads) support[b * s + r] = r < k ? S[r] : -1;
  if (tid == 0) residual[b] = ynorm[b] - explained_sh;
}

template <typename T>
cudaError_t launch(const void* gram, const void* xty, const void* ynorm, int64_t B, int64_t N, int64_t s, double tol,
                   void* ws, void* coef, int64_t* support, void* residual, cudaStream_t stream) {
  // Within the 48 KiB every block may use without opting in, for every s the op takes.
  static_assert(kOmpMaxNonzero * (3 * sizeof(double) + sizeof(int32_t)) <= 48 * 1024,
                "kOmpMaxNonzero's shared memory needs cudaFuncSetAttribute");
  const size_t smem = size_t(s) * (3 * sizeof(T) + sizeof(int32_t));
  auto kernel = omp_kernel<T>;
  // The Cholesky scratch holds one launch's targets: later chunks reuse it.
  const int64_t chunk = omp_batch_per_launch(B, s, sizeof(T));
  for (int64_t b0 = 0; b0 < B; b0 += chunk) {
    const int64_t nb = B - b0 < chunk ? B - b0 : chunk;
    kernel<<<dim3(unsigned(nb)), kThreads, smem, stream>>>(
        static_cast<const T*>(gram), static_cast<const T*>(xty) + b0 * N, static_cast<const T*>(ynorm) + b0,
        int32_t(N), int32_t(s), static_cast<T>(tol), tol >= 0, static_cast<T*>(ws), static_cast<T*>(coef) + b0 * N,
        support + b0 * s, static_cast<T*>(residual) + b0);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

int64_t omp_batch_per_launch(int64_t B, int64_t s, int64_t elem_bytes) {
  const int64_t fit = kOmpWorkspaceBytes / (s * s * elem_bytes);
  return B < fit ? B : (fit < 1 ? 1 : fit);
}

int64_t omp_workspace_elems(int64_t B, int64_t s, int64_t elem_bytes) {
  return omp_batch_per_launch(B, s, elem_bytes) * s * s;
}

cudaError_t omp(const void* gram, const void* xty, const void* y_norm_sq, OmpDType dtype, int64_t B, int64_t N,
                int64_t s, double tol, void* workspace, void* coef, int64_t* support, void* residual,
                cudaStream_t stream) {
  if (B < 1 || N < 1 || s < 1 || s > N || s > kOmpMaxNonzero || N > INT32_MAX || B > INT32_MAX)
    return cudaErrorInvalidValue;
  if (dtype == OmpDType::kFloat64)
    return launch<double>(gram, xty, y_norm_sq, B, N, s, tol, workspace, coef, support, residual, stream);
  return launch<float>(gram, xty, y_norm_sq, B, N, s, tol, workspace, coef, support, residual, stream);
}

}  // namespace cuda
}  // namespace vqfast
