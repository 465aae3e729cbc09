// Fused nearest-codebook search on CUDA: a 128x128 register-tiled distance GEMM whose
// epilogue keeps each thread's running winners, so the (N, K) matrix never exists.
//
// Like the CPU kernel (see csrc/cpu/nearest_code.cpp for why) it ranks by
// ||c - mu||^2 - 2 (z - mu).(c - mu) around mu = the codebook mean rounded to a
// multiple of the power of two just above the codebook's RMS spread, then recomputes
// the k winners' distances exactly and orders them by (distance, index).
#include <cfloat>
#include <climits>

#include "../shared_loops.h"
#include "common.cuh"
#include "nearest_code.h"

namespace vqfast {
namespace cuda {
namespace {

// Block tile BM rows x BN codes, BK dims per shared-memory stage; 256 threads in a
// 16x16 grid, each owning TM x TN = 8 x 8 accumulators (two 4-wide halves each way,
// 64 apart, so float4 shared loads are conflict free).
constexpr int BM = 128, BN = 128, BK = 8, TM = 8, TN = 8, THREADS = 256;

// Per dimension: mean[d] and var[d] over codes; fixed-order double sums keep it
// deterministic.
template <typename T>
__global__ void codebook_stats_kernel(const T* __restrict__ cb, int64_t K, int64_t D, float* __restrict__ mean,
                                      float* __restrict__ var) {
  __shared__ double part[2][32][33];
  const int64_t d = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  double s = 0.0, s2 = 0.0;
  if (d < D)
    for (int64_t c = threadIdx.y; c < K; c += 32) {
      const double x = to_float(cb[c * D + d]);
      s += x;
      s2 += x * x;
    }
  part[0][threadIdx.y][threadIdx.x] = s;
  part[1][threadIdx.y][threadIdx.x] = s2;
  __syncthreads();
  if (threadIdx.y == 0 && d < D) {
    double t = 0.0, t2 = 0.0;
    for (int j = 0; j < 32; ++j) {
      t += part[0][j][threadIdx.x];
      t2 += part[1][j][threadIdx.x];
    }
    const double m = t / static_cast<double>(K);
    mean[d] = static_cast<float>(m);
    var[d] = static_cast<float>(fmax(0.0, t2 / static_cast<double>(K) - m * m));
  }
}

// mu[d] = q * round(mean[d] / q), q = 2^ceil(log2(RMS spread)); one warp, in place.
__global__ void centre_kernel(float* __restrict__ mean_to_mu, const float* __restrict__ var, int64_t D) {
  const int lane = threadIdx.x;
  double v = 0.0;
  for (int64_t d = lane; d < D; d += 32) v += var[d];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const double spread = sqrt(v / static_cast<double>(D));
  int e = 0;
  frexp(spread, &e);
  const double q = ldexp(1.0, e);
  for (int64_t d = lane; d < D; d += 32) {
    const double m = mean_to_mu[d];
    mean_to_mu[d] = static_cast<float>(spread > 0.0 ? q * rint(m / q) : m);
  }
}

// cbc = codebook - mu as float32 and cn = ||cbc||^2; one warp per code.
template <typename T>
__global__ void centre_codebook_kernel(const T* __restrict__ cb, const float* __restrict__ mu, int64_t K, int64_t D,
                                       float* __restrict__ cbc, float* __restrict__ cn) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (c >= K) return;  // whole warps leave together
  float s = 0.f;
  for (int64_t d = lane; d < D; d += 32) {
    const float x = to_float(cb[c * D + d]) - mu[d];
    cbc[c * D + d] = x;
    s += x * x;
  }
  s = warp_sum(s);
  if (lane == 0) cn[c] = s;
}

__device__ __forceinline__ int tile_row(int ty, int i) { return i < 4 ? ty * 4 + i : 64 + ty * 4 + (i - 4); }

// (value, index) arg-min across the 16 lanes of a half-warp; all 32 lanes must call.
__device__ __forceinline__ void half_warp_argmin(float& v, int32_t& c) { shfl_select<8>(v, c, better); }

// Writes the k winners' indices (ranked by the expanded form) to out_idx (N, k).
template <typename T, int KCAP>
__global__ void __launch_bounds__(THREADS)
    nearest_code_kernel(const T* __restrict__ z, int64_t zs, const float* __restrict__ mu,
                        const float* __restrict__ cbc, const float* __restrict__ cn, int64_t N, int64_t K, int64_t D,
                        int k, int64_t* __restrict__ out_idx) {
  __shared__ __align__(16) float As[BK][BM];
  __shared__ __align__(16) float Bs[BK][BN];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * BM;
  // Tile loads: each thread fetches 4 consecutive dims of one row / one code.
  const int lr = tid / 2, lk = (tid % 2) * 4;

  // Each thread's best k (value, index) per row, ascending. Codes reach a thread
  // in increasing index order, so strict "<" keeps the lower index on ties.
  float topv[TM][KCAP];
  int32_t topi[TM][KCAP];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < KCAP; ++j) {
      topv[i][j] = INFINITY;
      topi[i][j] = INT_MAX;
    }

  for (int64_t n0 = 0; n0 < K; n0 += BN) {
    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;

    for (int64_t d0 = 0; d0 < D; d0 += BK) {
      const int64_t r = row0 + lr, c = n0 + lr;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t d = d0 + lk + j;
        As[lk + j][lr] = (r < N && d < D) ? to_float(z[r * zs + d]) - mu[d] : 0.f;
        Bs[lk + j][lr] = (c < K && d < D) ? cbc[c * D + d] : 0.f;
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < BK; ++kk) {
        const float4 a0 = *reinterpret_cast<const float4*>(&As[kk][ty * 4]);
        const float4 a1 = *reinterpret_cast<const float4*>(&As[kk][64 + ty * 4]);
        const float4 b0 = *reinterpret_cast<const float4*>(&Bs[kk][tx * 4]);
        const float4 b1 = *reinterpret_cast<const float4*>(&Bs[kk][64 + tx * 4]);
        const float a[TM] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
        const float b[TN] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
      __syncthreads();
    }

#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t c = n0 + tile_row(tx, j);
      if (c >= K) continue;
      const float cnc = cn[c];
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        const float v = cnc - 2.f * acc[i][j];
        if constexpr (KCAP == 1) {
          if (v < topv[i][0]) {
            topv[i][0] = v;
            topi[i][0] = static_cast<int32_t>(c);
          }
        } else if (v < topv[i][k - 1]) {
          topk_insert(topv[i], topi[i], k, v, static_cast<int32_t>(c));
        }
      }
    }
  }

  // Merge the 16 threads that share these rows (one half-warp: lanes differ in tx):
  // k rounds of a (value, index) arg-min; the winning thread advances its list.
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t row = row0 + tile_row(ty, i);
    if constexpr (KCAP == 1) {
      float v = topv[i][0];
      int32_t c = topi[i][0];
      half_warp_argmin(v, c);
      if (tx == 0 && row < N) out_idx[row] = c;
    } else {
      int head = 0;
      for (int j = 0; j < k; ++j) {
        const int h = head < k ? head : k - 1;
        float v = head < k ? topv[i][h] : INFINITY;
        int32_t c = head < k ? topi[i][h] : INT_MAX;
        const int32_t mine = c;
        half_warp_argmin(v, c);
        if (mine == c) ++head;
        if (tx == 0 && row < N) out_idx[row * k + j] = c;
      }
    }
  }
}

// Exact sum((z - c)^2) for each row's k winners, then order by (distance, index).
// One warp per row.
template <typename T>
__global__ void finish_kernel(const T* __restrict__ z, int64_t zs, const T* __restrict__ cb, int64_t N, int64_t K,
                              int64_t D, int k, int64_t* __restrict__ idx, float* __restrict__ dist) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  int64_t* ri = idx + row * k;
  float* rd = dist + row * k;
  for (int j = 0; j < k; ++j) {
    // A row with fewer than k finite ranking values (non-finite input through the raw
    // entry point) keeps INT_MAX placeholders: clamp before reading the codebook.
    const int64_t c = ri[j] < 0 ? 0 : (ri[j] >= K ? K - 1 : ri[j]);
    __syncwarp();
    if (lane == 0) ri[j] = c;
    float s = 0.f;
    for (int64_t d = lane; d < D; d += 32) {
      const float t = to_float(z[row * zs + d]) - to_float(cb[c * D + d]);
      s += t * t;
    }
    s = warp_sum(s);
    if (lane == 0) rd[j] = s;
  }
  if (lane == 0) {
    for (int j = 1; j < k; ++j) {
      ordered_insert(rd, ri, j, rd[j], ri[j]);
    }
  }
}

template <typename T>
cudaError_t launch(const T* z, int64_t zs, const T* cb, int64_t N, int64_t K, int64_t D, int k, float* ws,
                   int64_t* out_idx, float* out_dist, cudaStream_t stream) {
  float* mu = ws;
  float* cn = ws + D;
  float* cbc = ws + D + K;  // its first D floats hold the variances until centring is done
  codebook_stats_kernel<T><<<static_cast<unsigned>(ceil_div(D, 32)), dim3(32, 32), 0, stream>>>(cb, K, D, mu, cbc);
  centre_kernel<<<1, 32, 0, stream>>>(mu, cbc, D);
  centre_codebook_kernel<T><<<static_cast<unsigned>(ceil_div(K, 8)), 256, 0, stream>>>(cb, mu, K, D, cbc, cn);
  const unsigned grid = static_cast<unsigned>(ceil_div(N, BM));
  if (k == 1)
    nearest_code_kernel<T, 1><<<grid, THREADS, 0, stream>>>(z, zs, mu, cbc, cn, N, K, D, k, out_idx);
  else if (k <= 4)
    nearest_code_kernel<T, 4><<<grid, THREADS, 0, stream>>>(z, zs, mu, cbc, cn, N, K, D, k, out_idx);
  else if (k <= 16)
    nearest_code_kernel<T, 16><<<grid, THREADS, 0, stream>>>(z, zs, mu, cbc, cn, N, K, D, k, out_idx);
  else
    nearest_code_kernel<T, 64><<<grid, THREADS, 0, stream>>>(z, zs, mu, cbc, cn, N, K, D, k, out_idx);
  finish_kernel<T><<<static_cast<unsigned>(ceil_div(N, 8)), 256, 0, stream>>>(z, zs, cb, N, K, D, k, out_idx, out_dist);
  return cudaGetLastError();
}

}  // namespace

int64_t nearest_code_workspace_floats(int64_t K, int64_t D) { return D + K + K * D; }

cudaError_t nearest_code(const void* z, int64_t z_row_stride, const void* codebook, DType dtype, int64_t N,
                         int64_t K, int64_t D, int64_t k, float* workspace, int64_t* out_idx, float* out_dist,
                         cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  if (k < 1 || k > kNearestCodeMaxK || k > K || D < 1) return cudaErrorInvalidValue;
  const int ki = static_cast<int>(k);
  switch (dtype) {
    case DType::kFloat32:
      return launch(static_cast<const float*>(z), z_row_stride, static_cast<const float*>(codebook), N, K, D, ki,
                    workspace, out_idx, out_dist, stream);
    case DType::kFloat16:
      return launch(static_cast<const __half*>(z), z_row_stride, static_cast<const __half*>(codebook), N, K, D, ki,
                    workspace, out_idx, out_dist, stream);
    case DType::kBFloat16:
      return launch(static_cast<const __nv_bfloat16*>(z), z_row_stride, static_cast<const __nv_bfloat16*>(codebook), N,
                    K, D, ki, workspace, out_idx, out_dist, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace vqfast
