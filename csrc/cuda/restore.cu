// CUDA kernels of the restoration pass. restore_step: one block per sequence row; the
// NLL test and the inverse-CDF sample (a block-wide scan over the vocabulary, stopped at
// the first tile that crosses the target) never leave the device, so a whole restoration
// pass runs without host synchronisation and can be captured in a CUDA graph.
// decode_attention: one block per (row, head), scores in shared memory.
#include <cfloat>
#include <cmath>

#include "../counter_rng.h"
#include "common.cuh"
#include "restore.h"

namespace vqfast {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ double load_as(const double* p, int64_t i) { return p[i]; }
template <typename In>
__device__ __forceinline__ float load_as(const In* p, int64_t i) { return to_float(p[i]); }

template <typename A>
__device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

template <typename A>
__device__ __forceinline__ A warp_add(A v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Block-wide reductions; every thread gets the result. `scratch` holds kThreads/32 values.
template <typename A, bool kMax>
__device__ A block_reduce(A v, A* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = kMax ? warp_max(v) : warp_add(v);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  A r = scratch[0];
  for (int w = 1; w < warps; ++w) r = kMax ? fmax(r, scratch[w]) : r + scratch[w];
  return r;
}

// Inclusive scan over the block in thread order; returns this thread's prefix and the tile total.
template <typename A>
__device__ A block_scan(A v, A* scratch, A& total) {
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

template <typename In, typename A>
__global__ void __launch_bounds__(kThreads) restore_step_kernel(const In* __restrict__ logits, const int64_t* current,
                                                                const int64_t* seeds, int64_t V, A threshold,
                                                                int64_t position, A temp, int64_t* tokens, A* nll) {
  __shared__ A scratch[kThreads / 32];
  __shared__ int64_t found;
  const int64_t row = blockIdx.x;
  const In* x = logits + row * V;
  A top = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) top = fmax(top, load_as(x, v));
  top = block_reduce<A, true>(top, scratch);
  A z = 0;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) z += exp(load_as(x, v) - top);
  z = block_reduce<A, false>(z, scratch);
  const int64_t cur = current[row];
  const A n = top + log(z) - load_as(x, cur);
  if (!(n > threshold)) {  // uniform across the block: every thread holds the same n
    if (threadIdx.x == 0) {
      nll[row] = n;
      tokens[row] = cur;
    }
    return;
  }
  A t = 0;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) t += exp((load_as(x, v) - top) / temp);
  const A target = static_cast<A>(counter_uniform(seeds[row], position)) * block_reduce<A, false>(t, scratch);
  if (threadIdx.x == 0) found = V - 1;  // rounding can leave the last prefix just below the target
  A carry = 0;
  for (int64_t base = 0; base < V; base += blockDim.x) {
    const int64_t v = base + threadIdx.x;
    const A e = v < V ? exp((load_as(x, v) - top) / temp) : A(0);
    A tile = 0;
    const A c = carry + block_scan(e, scratch, tile);
    const bool hit = v < V && c > target;
    if (hit) atomicMin(reinterpret_cast<unsigned long long*>(&found), static_cast<unsigned long long>(v));
    if (__syncthreads_or(hit)) break;
    carry += tile;
  }
  if (threadIdx.x == 0) {
    nll[row] = n;
    tokens[row] = found;
  }
}

template <typename In, typename A>
__global__ void __launch_bounds__(128) decode_attention_kernel(const In* __restrict__ q, const In* __restrict__ k,
                                                               const In* __restrict__ v, int64_t H, int64_t d,
                                                               int64_t s0, int64_t s1, int64_t length, A scale,
                                                               In* __restrict__ out) {
  extern __shared__ unsigned char smem_raw[];
  A* qs = reinterpret_cast<A*>(smem_raw);
  A* p = qs + d;
  __shared__ A scratch[4];
  const int64_t mh = blockIdx.x, m = mh / H, h = mh % H;
  const In* kb = k + m * s0 + h * s1;
  const In* vb = v + m * s0 + h * s1;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) qs[i] = load_as(q, mh * d + i);
  __syncthreads();
  A top = -INFINITY;
  for (int64_t t = threadIdx.x; t < length; t += blockDim.x) {
    A s = 0;
    for (int64_t i = 0; i < d; ++i) s += qs[i] * load_as(kb, t * d + i);
    p[t] = s * scale;
    top = fmax(top, p[t]);
  }
  top = block_reduce<A, true>(top, scratch);
  A z = 0;
  for (int64_t t = threadIdx.x; t < length; t += blockDim.x) z += (p[t] = exp(p[t] - top));
  z = block_reduce<A, false>(z, scratch);  // its barriers also publish p
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    A acc = 0;
    for (int64_t t = 0; t < length; ++t) acc += p[t] * load_as(vb, t * d + i);
    out[mh * d + i] = static_cast<In>(acc / z);
  }
}

template <typename In, typename A>
cudaError_t launch_restore(const void* logits, const int64_t* current, const int64_t* seeds, int64_t M, int64_t V,
                           double threshold, int64_t position, double temperature, int64_t* tokens, void* nll,
                           cudaStream_t stream) {
  restore_step_kernel<In, A><<<dim3(unsigned(M)), kThreads, 0, stream>>>(
      static_cast<const In*>(logits), current, seeds, V, static_cast<A>(threshold), position,
      static_cast<A>(temperature), tokens, static_cast<A*>(nll));
  return cudaGetLastError();
}

template <typename In, typename A>
cudaError_t launch_attention(const void* q, const void* k, const void* v, int64_t M, int64_t H, int64_t d, int64_t s0,
                             int64_t s1, int64_t length, double scale, void* out, cudaStream_t stream) {
  const size_t smem = size_t(d + length) * sizeof(A);
  auto kernel = decode_attention_kernel<In, A>;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<dim3(unsigned(M * H)), 128, smem, stream>>>(static_cast<const In*>(q), static_cast<const In*>(k),
                                                       static_cast<const In*>(v), H, d, s0, s1, length,
                                                       static_cast<A>(scale), static_cast<In*>(out));
  return cudaGetLastError();
}

}  // namespace

cudaError_t restore_step(const void* logits, FloatType dtype, const int64_t* current, const int64_t* seeds, int64_t M,
                         int64_t V, double threshold, int64_t position, double temperature, int64_t* tokens,
                         void* nll, cudaStream_t stream) {
  if (M < 1 || V < 1 || M > INT32_MAX || !(temperature > 0)) return cudaErrorInvalidValue;
  switch (dtype) {
    case FloatType::kFloat64:
      return launch_restore<double, double>(logits, current, seeds, M, V, threshold, position, temperature, tokens,
                                            nll, stream);
    case FloatType::kFloat16:
      return launch_restore<__half, float>(logits, current, seeds, M, V, threshold, position, temperature, tokens,
                                           nll, stream);
    case FloatType::kBFloat16:
      return launch_restore<__nv_bfloat16, float>(logits, current, seeds, M, V, threshold, position, temperature,
                                                  tokens, nll, stream);
    default:
      return launch_restore<float, float>(logits, current, seeds, M, V, threshold, position, temperature, tokens, nll,
                                          stream);
  }
}

cudaError_t decode_attention(const void* q, const void* k, const void* v, FloatType dtype, int64_t M, int64_t H,
                             int64_t d, int64_t cache_s0, int64_t cache_s1, int64_t length, double scale, void* out,
                             cudaStream_t stream) {
  if (M < 1 || H < 1 || d < 1 || d > kDecodeAttentionMaxD || length < 1 || M * H > INT32_MAX)
    return cudaErrorInvalidValue;
  switch (dtype) {
    case FloatType::kFloat64:
      return launch_attention<double, double>(q, k, v, M, H, d, cache_s0, cache_s1, length, scale, out, stream);
    case FloatType::kFloat16:
      return launch_attention<__half, float>(q, k, v, M, H, d, cache_s0, cache_s1, length, scale, out, stream);
    case FloatType::kBFloat16:
      return launch_attention<__nv_bfloat16, float>(q, k, v, M, H, d, cache_s0, cache_s1, length, scale, out, stream);
    default:
      return launch_attention<float, float>(q, k, v, M, H, d, cache_s0, cache_s1, length, scale, out, stream);
  }
}

}  // namespace cuda
}  // namespace vqfast
