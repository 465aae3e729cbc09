// exp over 8 float lanes with GCC vector extensions (AVX2/AVX-512 registers where the
// caller is compiled for them, SSE pairs otherwise): Cody-Waite reduction by ln 2 and
// Cephes' degree-6 polynomial on |r| <= ln2 / 2; about 1 ulp, inputs clamped to the
// float range (so -inf -> 0).
#pragma once

#include <cstdint>
#include <cstring>

namespace vqfast {

typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));

inline __attribute__((always_inline)) f32x8 exp8(f32x8 x) {
  const f32x8 hi = f32x8{} + 88.3762626647949f, lo = f32x8{} - 87.3365478515625f;
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  f32x8 fx = x * 1.44269504088896341f + 0.5f;
  const i32x8 n0 = __builtin_convertvector(fx, i32x8);  // truncation; fix up to floor below
  f32x8 fl = __builtin_convertvector(n0, f32x8);
  fl = fl > fx ? fl - 1.0f : fl;
  const f32x8 r = x - fl * 0.693359375f + fl * 2.12194440e-4f;
  f32x8 y = r * 1.9875691500e-4f + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const i32x8 bits = (__builtin_convertvector(fl, i32x8) + 127) << 23;
  f32x8 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

// In place: p[i] = exp(p[i] - shift) for i < n; returns their sum.
inline __attribute__((always_inline)) float exp_shifted_sum(float* p, int64_t n, float shift) {
  f32x8 acc = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    f32x8 v;
    std::memcpy(&v, p + i, sizeof(v));
    v = exp8(v - shift);
    std::memcpy(p + i, &v, sizeof(v));
    acc += v;
  }
  float sum = 0;
  if (i < n) {
    f32x8 v = f32x8{} - 1e30f;  // padding lanes: exp -> 0
    std::memcpy(&v, p + i, sizeof(float) * (n - i));
    v = exp8(v - shift);
    std::memcpy(p + i, &v, sizeof(float) * (n - i));
    for (int64_t j = 0; j < n - i; ++j) sum += v[j];
  }
  for (int j = 0; j < 8; ++j) sum += acc[j];
  return sum;
}

}  // namespace vqfast
