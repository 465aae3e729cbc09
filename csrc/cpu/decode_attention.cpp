// Single-query attention against a KV cache on the CPU (one incremental decoding step):
// out[m, h] = softmax(scale q[m, h] . k[m, h, :length]) v[m, h, :length]. (m, h) pairs
// run in parallel; scores stay in a per-thread buffer of `length` floats.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "vec_exp.h"

namespace vqfast {
namespace {

typedef float f32x16 __attribute__((vector_size(64)));

// (u, v) -> u's and v's even lanes + their odd lanes: adjacent partial sums of each row
// block added, two blocks of 16 partials into one.
inline __attribute__((always_inline)) f32x16 fold(f32x16 u, f32x16 v) {
  return __builtin_shufflevector(u, v, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         __builtin_shufflevector(u, v, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

// The dot products of q with 16 consecutive cache rows of DC (a multiple of 16) floats, as
// one vector: each row's 16 partial sums folded pairwise (15 folds) instead of 16 separate
// horizontal sums, the cost that dominated the score loop.
template <int DC>
inline __attribute__((always_inline)) f32x16 dots16(const float* __restrict__ q, const float* __restrict__ k) {
  f32x16 r[16];
  for (int j = 0; j < 16; ++j) {
    f32x16 acc = {};
    for (int c = 0; c < DC; c += 16) {
      f32x16 kv, qv;
      std::memcpy(&kv, k + j * DC + c, sizeof(kv));
      std::memcpy(&qv, q + c, sizeof(qv));
      acc += kv * qv;
    }
    r[j] = acc;
  }
  f32x16 a[8], b[4], c[2];
  for (int i = 0; i < 8; ++i) a[i] = fold(r[2 * i], r[2 * i + 1]);
  for (int i = 0; i < 4; ++i) b[i] = fold(a[2 * i], a[2 * i + 1]);
  for (int i = 0; i < 2; ++i) c[i] = fold(b[2 * i], b[2 * i + 1]);
  return fold(c[0], c[1]);
}

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
  int64_t t = 0;
  if constexpr (std::is_same_v<T, float> && DC > 0 && DC % 16 == 0) {
    f32x16 tops = f32x16{} - INFINITY;
    for (; t + 16 <= length; t += 16) {
      // The cache is streamed once per step, mostly from L3: fetch the next block ahead.
      for (int j = 0; j < 16 * DC; j += 16) __builtin_prefetch(k + (t + 16) * DC + j);
      const f32x16 s = dots16<DC>(q, k + t * DC) * scale;
      std::memcpy(p + t, &s, sizeof(s));
      tops = s > tops ? s : tops;
    }
    for (int j = 0; j < 16; ++j) top = tops[j] > top ? tops[j] : top;
  }
  for (; t < length; ++t) {
    const T* kt = k + t * d;
    __builtin_prefetch(kt + 8 * d);
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
    // Four accumulators over t: one chain of FMAs per output vector would wait on the
    // FMA latency every cache row.
    T acc[4][DC] = {};
    int64_t t = 0;
    for (; t + 4 <= length; t += 4) {
      __builtin_prefetch(v + (t + 8) * DC);
      for (int u = 0; u < 4; ++u) {
        const T w = p[t + u];
        const T* vt = v + (t + u) * DC;
#pragma omp simd
        for (int i = 0; i < DC; ++i) acc[u][i] += w * vt[i];
      }
    }
    for (; t < length; ++t) {
      const T w = p[t];
      const T* vt = v + t * DC;
#pragma omp simd
      for (int i = 0; i < DC; ++i) acc[0][i] += w * vt[i];
    }
    for (int i = 0; i < DC; ++i) out[i] = ((acc[0][i] + acc[1][i]) + (acc[2][i] + acc[3][i])) / z;
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
