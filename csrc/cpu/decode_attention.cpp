// Single-query attention against a KV cache on the CPU (one incremental decoding step):
// out[m, h] = softmax(scale q[m, h] . k[m, h, :length]) v[m, h, :length]. (m, h) pairs
// run in parallel; scores stay in a per-thread buffer of `length` floats.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "../checks.h"

namespace vqfast {
namespace {

template <typename T>
void attend(const T* q, const T* k, const T* v, int64_t length, int64_t d, T scale, T* out, std::vector<T>& p) {
  T top = -INFINITY;
  for (int64_t t = 0; t < length; ++t) {
    const T* kt = k + t * d;
    T s = 0;
    for (int64_t i = 0; i < d; ++i) s += q[i] * kt[i];
    p[t] = s * scale;
    top = p[t] > top ? p[t] : top;
  }
  T z = 0;
  for (int64_t t = 0; t < length; ++t) z += (p[t] = std::exp(p[t] - top));
  for (int64_t i = 0; i < d; ++i) out[i] = 0;
  for (int64_t t = 0; t < length; ++t) {
    const T w = p[t] / z;
    const T* vt = v + t * d;
    for (int64_t i = 0; i < d; ++i) out[i] += w * vt[i];
  }
}

}  // namespace

at::Tensor decode_attention_cpu(const at::Tensor& q_in, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                int64_t length, double scale) {
  check_decode_attention_args(q_in, k_cache, v_cache, length);
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
        attend<scalar_t>(qp + b * d, kp + m * ks0 + h * ks1, vp + m * vs0 + h * vs1, length, d,
                         static_cast<scalar_t>(scale), op + b * d, p);
      }
    });
  });
  return out;
}

}  // namespace vqfast
