// Single-query attention against a KV cache on the CPU (one incremental decoding step):
// out[m, h] = softmax(scale q[m, h] . k[m, h, :length]) v[m, h, :length]. (m, h) pairs
// run in parallel; scores stay in a per-thread buffer of `length` floats.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "vec_exp.h"

namespace vqfast {
namespace {

// One (row, head): scores, softmax, weighted sum of values. T = double keeps std::exp
// (the float64 reference tests); float uses the 8-lane exp.
// DC > 0: the head size as a compile-time constant, so q and the output row stay in
// registers across the cache (the common GPT-2 head sizes); DC = 0: any d.
template <typename T, int DC>
inline __attribute__((always_inline)) void attend_impl(const T* __restrict__ q, const T* __restrict__ k,
                                                        const T* __restrict__ v, int64_t length, int64_t d_rt, T scale,
                                                        T* __restrict__ out, T* __restrict__ p) {
  const int64_t d = DC > 0 ? DC : d_rt;
  T top = -INFINITY;
  for (int64_t t = 0; t < length; ++t) {
    const T* kt = k + t * d;
    // The cache is streamed once per step, mostly from L3/DRAM: fetch ahead.
    __builtin_prefetch(kt + 8 * d);
    __builtin_prefetch(v + t * d);
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < d; ++i) s += q[i] * kt[i];
    p[t] = s * scale;
    top = p[t] > top ? p[t] : top;
  }
  T z = 0;
  if constexpr (std::is_same_v<T, float>) {
    z = exp_shifted_sum(p, length, top);
  } else {
    for (int64_t t = 0; t < length; ++t) z += (p[t] = std::exp(p[t] - top));
  }
  if constexpr (DC > 0) {
    T acc[DC] = {};
    for (int64_t t = 0; t < length; ++t) {
      const T w = p[t];
      const T* vt = v + t * DC;
#pragma omp simd
      for (int i = 0; i < DC; ++i) acc[i] += w * vt[i];
    }
    for (int i = 0; i < DC; ++i) out[i] = acc[i] / z;
  } else {
    for (int64_t i = 0; i < d; ++i) out[i] = 0;
    for (int64_t t = 0; t < length; ++t) {
      const T w = p[t] / z;
      const T* vt = v + t * d;
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) out[i] += w * vt[i];
    }
  }
}

template <typename T>
inline __attribute__((always_inline)) void attend_any(const T* q, const T* k, const T* v, int64_t length, int64_t d,
                                                       T scale, T* out, T* p) {
  switch (d) {
    case 32:
      return attend_impl<T, 32>(q, k, v, length, d, scale, out, p);
    case 64:
      return attend_impl<T, 64>(q, k, v, length, d, scale, out, p);
    case 128:
      return attend_impl<T, 128>(q, k, v, length, d, scale, out, p);
    default:
      return attend_impl<T, 0>(q, k, v, length, d, scale, out, p);
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define VQ_ATTN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VQ_ATTN_CLONES
#endif

VQ_ATTN_CLONES void attend(const float* q, const float* k, const float* v, int64_t length, int64_t d, float scale,
                           float* out, float* p) {
  attend_any<float>(q, k, v, length, d, scale, out, p);
}

VQ_ATTN_CLONES void attend(const double* q, const double* k, const double* v, int64_t length, int64_t d, double scale,
                           double* out, double* p) {
  attend_any<double>(q, k, v, length, d, scale, out, p);
}

}  // namespace

at::Tensor decode_attention_cpu(const at::Tensor& q_in, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                int64_t length, double scale) {
  check_decode_attention_args(q_in, k_cache, v_cache, length);
  check_cpu("decode_attention_cpu", {&q_in, &k_cache, &v_cache});
  // The cache may be a slice of a larger preallocated one: only unit stride along d is required.
  TORCH_CHECK(k_cache.stride(3) == 1 && v_cache.stride(3) == 1 && k_cache.stride(2) == k_cache.size(3) &&
                  v_cache.stride(2) == v_cache.size(3),
              "k_cache and v_cache need contiguous (T, d) blocks per (m, h)");
  const at::Tensor q = q_in.contiguous();
  const int64_t M = q.size(0), H = q.size(1), d = q.size(2);
  at::Tensor out = at::empty_like(q);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "decode_attention_cpu", [&] {
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* kp = k_cache.data_ptr<scalar_t>();
    const scalar_t* vp = v_cache.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t ks0 = k_cache.stride(0), ks1 = k_cache.stride(1), vs0 = v_cache.stride(0), vs1 = v_cache.stride(1);
    at::parallel_for(0, M * H, 4, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> p(length);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t m = b / H, h = b % H;
        attend(qp + b * d, kp + m * ks0 + h * ks1, vp + m * vs0 + h * vs1, length, d, static_cast<scalar_t>(scale),
               op + b * d, p.data());
      }
    });
  });
  return out;
}

}  // namespace vqfast
