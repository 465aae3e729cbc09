// Device helpers shared by vqfast's CUDA kernels (raw pointers, no ATen).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace vqfast {
namespace cuda {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Strictly better under the (value, index) order: ties go to the lower index.
__device__ __forceinline__ bool better(float v, int32_t i, float bv, int32_t bi) {
  return v < bv || (v == bv && i < bi);
}

// (value, index) butterfly over groups of 2 * kFirstOffset lanes (16: the warp, 8: each
// half-warp): afterwards every lane holds the pair its group ranks first under
// `first(v, i, best_v, best_i)`. All 32 lanes must call.
template <int kFirstOffset, typename T, typename First>
__device__ __forceinline__ void shfl_select(T& v, int32_t& i, First first) {
#pragma unroll
  for (int off = kFirstOffset; off > 0; off >>= 1) {
    const T ov = __shfl_xor_sync(0xffffffffu, v, off);
    const int32_t oi = __shfl_xor_sync(0xffffffffu, i, off);
    if (first(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
}

// Loads as the accumulation type: double stays double, every other float becomes float.
__device__ __forceinline__ double load_as(const double* p, int64_t i) { return p[i]; }
template <typename In>
__device__ __forceinline__ float load_as(const In* p, int64_t i) { return to_float(p[i]); }

// Explicit conversions on the way out: torch's CUDAExtension compiles with
// -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__, which remove the
// implicit float -> __half / __nv_bfloat16 conversions (static_cast included).
__device__ __forceinline__ void store_as(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store_as(double* p, int64_t i, double v) { p[i] = v; }
__device__ __forceinline__ void store_as(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
__device__ __forceinline__ void store_as(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

template <typename A>
__device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Block-wide reductions; every thread gets the result. `scratch` holds one value per warp.
template <typename A, bool kMax>
__device__ __forceinline__ A block_reduce(A v, A* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = kMax ? warp_max(v) : warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  A r = scratch[0];
  for (int w = 1; w < warps; ++w) r = kMax ? fmax(r, scratch[w]) : r + scratch[w];
  return r;
}

// Inclusive scan over the block in thread order; returns this thread's prefix and the tile total.
template <typename A>
__device__ __forceinline__ A block_scan(A v, A* scratch, A& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const A o = __shfl_up_sync(0xffffffffu, v, off);
    if (lane >= off) v += o;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = v;
  __syncthreads();
  A before = 0;
  total = 0;
  for (int w = 0; w < warps; ++w) {
    if (w < warp) before += scratch[w];
    total += scratch[w];
  }
  return before + v;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace cuda
}  // namespace vqfast
