// CUDA decode_attention: one block per (row, head), the query's scores over the cache
// in shared memory, then the softmax-weighted sum of the cached values.
//
// Scores: a warp per cached position, its lanes along the head dimension, so each
// warp reads one contiguous d-long key row (a lane per position would read d-strided
// addresses, one memory transaction per lane). Values: a thread per dimension, the
// threads of a warp reading adjacent values of one position. The device's shared-memory
// limits are read once per device and kernel, not on every call.
#include <atomic>
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
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  A top = -INFINITY;
  for (int64_t t = warp; t < length; t += warps) {
    A s = 0;
    for (int64_t i = lane; i < d; i += 32) s += qs[i] * load_as(kb, t * d + i);
    s = warp_sum(s) * scale;  // every lane holds the score
    if (lane == 0) p[t] = s;
    top = fmax(top, s);
  }
  top = block_reduce<A, true>(top, scratch);  // its barriers also publish p
  A z = 0;
  for (int64_t t = threadIdx.x; t < length; t += blockDim.x) z += (p[t] = exp(p[t] - top));
  z = block_reduce<A, false>(z, scratch);  // its barriers also publish p
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    A acc = 0;
    for (int64_t t = 0; t < length; ++t) acc += p[t] * load_as(vb, t * d + i);
    store_as(out, mh * d + i, acc / z);
  }
}

// The device's opt-in shared-memory maximum per block and the kernel's static bytes,
// read once per (device, kernel) and cached: a host attribute query on every eager call
// costs more than the kernel at short caches. 0 until read; -1 if the query failed.
constexpr int kMaxDevices = 64;

template <typename In, typename A>
int64_t dynamic_smem_limit() {
  static std::atomic<int64_t> cached[kMaxDevices];  // zero-initialised (static storage)
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) {
    cudaGetLastError();  // leave no error behind for the next op
    return 0;
  }
  int64_t limit = cached[dev].load(std::memory_order_acquire);
  if (limit != 0) return limit < 0 ? 0 : limit;
  int optin = 0;
  cudaFuncAttributes fa{};
  limit = -1;
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) == cudaSuccess &&
      cudaFuncGetAttributes(&fa, decode_attention_kernel<In, A>) == cudaSuccess) {
    const int64_t dyn = int64_t(optin) - int64_t(fa.sharedSizeBytes);
    // Opt in once, to the whole limit: any launch at or below it is then allowed.
    if (dyn > 0 && cudaFuncSetAttribute(decode_attention_kernel<In, A>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(dyn)) == cudaSuccess)
      limit = dyn;
  }
  if (limit < 0) cudaGetLastError();
  cached[dev].store(limit, std::memory_order_release);  // concurrent first calls store the same value
  return limit < 0 ? 0 : limit;
}

// The longest cache the kernel holds: its scores p and the query live in dynamic shared memory.
template <typename In, typename A>
int64_t max_length_for(int64_t d) {
  return dynamic_smem_limit<In, A>() / int64_t(sizeof(A)) - d;
}

template <typename In, typename A>
cudaError_t launch_attention(const void* q, const void* k, const void* v, int64_t M, int64_t H, int64_t d, int64_t s0,
                             int64_t s1, int64_t length, double scale, void* out, cudaStream_t stream) {
  if (length > max_length_for<In, A>(d)) return cudaErrorInvalidValue;
  const size_t smem = size_t(d + length) * sizeof(A);
  auto kernel = decode_attention_kernel<In, A>;
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
