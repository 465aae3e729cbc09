// CUDA decode_attention: one block per (row, head), the query's scores over the cache
// in shared memory, then the softmax-weighted sum of the cached values.
#include <cfloat>
#include <cmath>

#include "common.cuh"
#include "decode_attention.h"

namespace vqfast {
namespace cuda {
namespace {

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
    store_as(out, mh * d + i, acc / z);
  }
}

// The longest cache the kernel holds: its scores p and the query live in dynamic shared
// memory, which with the kernel's static bytes must fit the device's opt-in maximum.
template <typename In, typename A>
int64_t max_length_for(int64_t d) {
  int dev = 0, optin = 0;
  cudaFuncAttributes fa{};
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess ||
      cudaFuncGetAttributes(&fa, decode_attention_kernel<In, A>) != cudaSuccess) {
    cudaGetLastError();  // leave no error behind for the next op
    return 0;
  }
  return (int64_t(optin) - int64_t(fa.sharedSizeBytes)) / int64_t(sizeof(A)) - d;
}

template <typename In, typename A>
cudaError_t launch_attention(const void* q, const void* k, const void* v, int64_t M, int64_t H, int64_t d, int64_t s0,
                             int64_t s1, int64_t length, double scale, void* out, cudaStream_t stream) {
  if (length > max_length_for<In, A>(d)) return cudaErrorInvalidValue;
  const size_t smem = size_t(d + length) * sizeof(A);
  auto kernel = decode_attention_kernel<In, A>;
  // The static scratch counts against the same 48 KiB default: opt in above it, always
  // with the exact dynamic size (the attribute is per kernel, set again on each call).
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (err != cudaSuccess) {
    cudaGetLastError();
    return err;
  }
  kernel<<<dim3(unsigned(M * H)), 128, smem, stream>>>(static_cast<const In*>(q), static_cast<const In*>(k),
                                                       static_cast<const In*>(v), H, d, s0, s1, length,
                                                       static_cast<A>(scale), static_cast<In*>(out));
  return cudaGetLastError();
}

}  // namespace

int64_t decode_attention_max_length(FloatType dtype, int64_t d) {
  switch (dtype) {
    case FloatType::kFloat64:
      return max_length_for<double, double>(d);
    case FloatType::kFloat16:
      return max_length_for<__half, float>(d);
    case FloatType::kBFloat16:
      return max_length_for<__nv_bfloat16, float>(d);
    default:
      return max_length_for<float, float>(d);
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
