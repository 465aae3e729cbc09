// CUDA restore_step: one block per sequence row. The NLL test and the inverse-CDF
// sample (a block-wide scan over the vocabulary, stopped at the first tile that crosses
// the target) never leave the device, so a whole restoration pass runs without host
// synchronisation and can be captured in a CUDA graph.
#include <cfloat>
#include <cmath>

#include "../counter_rng.h"
#include "common.cuh"
#include "restore_step.h"

namespace vqfast {
namespace cuda {
namespace {

constexpr int kThreads = 256;

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
  // Out of [0, V): no read; NaN marks the row (the op checks tokens unless told not
  // to, and the restoration pass checks its NLLs) and the token stays.
  const A n = cur >= 0 && cur < V ? top + log(z) - load_as(x, cur) : A(NAN);
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
cudaError_t launch_restore(const void* logits, const int64_t* current, const int64_t* seeds, int64_t M, int64_t V,
                           double threshold, int64_t position, double temperature, int64_t* tokens, void* nll,
                           cudaStream_t stream) {
  restore_step_kernel<In, A><<<dim3(unsigned(M)), kThreads, 0, stream>>>(
      static_cast<const In*>(logits), current, seeds, V, static_cast<A>(threshold), position,
      static_cast<A>(temperature), tokens, static_cast<A*>(nll));
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

}  // namespace cuda
}  // namespace vqfast
