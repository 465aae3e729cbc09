// nearest_code on the CPU, the pieces every ISA variant shares: L-lane vector types,
// the Problem a variant solves, the value bound, row packing with the non-finite scan,
// and the exact recompute of each row's winners (sorted by (distance, index)).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../checks.h"

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "../shared_loops.h"

namespace vqfast {
namespace {  // included by nearest_code.cpp only: one translation unit, so each ISA variant inlines all it calls

// L-lane vectors through GCC/Clang vector extensions: each ISA variant below is
// compiled with its own target, and the same source maps onto zmm, ymm or xmm/NEON.
template <int L> struct Vec;
template <> struct Vec<16> {
  typedef float f __attribute__((vector_size(64)));
  typedef int32_t i __attribute__((vector_size(64)));
};
template <> struct Vec<8> {
  typedef float f __attribute__((vector_size(32)));
  typedef int32_t i __attribute__((vector_size(32)));
};
template <> struct Vec<4> {
  typedef float f __attribute__((vector_size(16)));
  typedef int32_t i __attribute__((vector_size(16)));
};

#define VQ_INLINE inline __attribute__((always_inline))

template <typename V> VQ_INLINE V vload(const void* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V> VQ_INLINE void vstore(void* p, V v) { __builtin_memcpy(p, &v, sizeof(V)); }

constexpr float kInf = std::numeric_limits<float>::infinity();

// float32 -> bfloat16, to nearest with ties to even (finite inputs).
VQ_INLINE uint16_t to_bf16(float x) {
  uint32_t bits;
  __builtin_memcpy(&bits, &x, sizeof(bits));
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}
// A row block's packed z (rows x D floats) is kept near this size (L1/L2 resident).
constexpr int64_t kRowBlockFloats = 16384;

struct Problem {
  const void* z;         // (N, D) contiguous, dtype st
  const void* codebook;  // (K, D) contiguous, dtype st
  at::ScalarType st;
  int64_t N, K, D, k;
  float bound;          // largest |value| whose squared distances stay finite (see value_bound)
  const float* mu;      // (D,) codebook mean
  const float* packed;  // (P, D, NR) centred codes, zero padded
  const float* cnorm;   // (P * NR,) ||c - mu||^2, +inf on padding
  int64_t P, NR, RB;  // panels, panel width, rows per block
  int64_t* out_idx;     // (N, k)
  float* out_dist;      // (N, k)
  // The bfloat16 variants only (see bf16_blocks): codes as bfloat16 tiles, their norms, the bounds.
  const uint16_t* packed_bf16;  // (P, 2, Dp / 2, 16, 2): each 32-code panel as two B tiles
  const float* cerr1;           // (P * NR,) each code's interval half-width is nx * cerr1 + cerr0,
  const float* cerr0;           // nx = the row's computed norm (Bounds, folded per code; +inf on padding)
  int64_t Dp;                   // D rounded up to 32 (a tile's depth) for AMX, to 2 (a pair) for vdpbf16ps
  struct Bounds {
    float A, B, Ct, Dt;  // |approx - exact| <= A |x||c| + B ||c||^2 + Ct (|x| + |c|) + Dt
    float rfac;          // ||x||^2 <= rfac * (computed ||x||^2)
    float cG, slack;     // relative and absolute widening for the final recompute's rounding
  } bf16;
};

// Distances are float32 sums of D squares of differences: |values| <= sqrt(FLT_MAX / 4D)
// keeps every one finite. Rounded down to a float, so `|x| <= bound` in float32 is the
// same test as in exact arithmetic.
double overflow_bound(int64_t D) { return std::sqrt(static_cast<double>(std::numeric_limits<float>::max()) / (4.0 * D)); }

float value_bound(int64_t D) {
  const double b = overflow_bound(D);
  float f = static_cast<float>(b);
  if (static_cast<double>(f) > b) f = std::nextafter(f, 0.f);
  return f;
}

// x rounded up to a float (bounds may only grow).
float round_up(double x) {
  const float f = static_cast<float>(x);
  return static_cast<double>(f) < x ? std::nextafter(f, kInf) : f;
}

// L values of p as floats (half / bfloat16 widened one by one; the compiler vectorises it).
template <typename T, int L> VQ_INLINE typename Vec<L>::f load_floats(const T* p) {
  using VF = typename Vec<L>::f;
  if constexpr (std::is_same_v<T, float>) {
    return vload<VF>(p);
  } else {
    VF v;
    for (int l = 0; l < L; ++l) v[l] = static_cast<float>(p[l]);
    return v;
  }
}

// Lanes with |x| > bound (all bits set), compared on the bit patterns: for non-negative
// floats they order like the values, and NaN / Inf patterns lie above every finite bound.
template <int L> struct AboveBound {
  using VF = typename Vec<L>::f;
  using VI = typename Vec<L>::i;
  VI magnitude, bound;
  explicit AboveBound(float b) : magnitude(VI{} + 0x7fffffff) {
    int32_t bits;
    __builtin_memcpy(&bits, &b, sizeof(bits));
    bound = VI{} + bits;
  }
  VQ_INLINE VI operator()(VF x) const { return (vload<VI>(&x) & magnitude) > bound; }
};

// Centres rows [row0, row0 + rows) into dst (rows rounded up to MR, row-major (., D));
// rows past N are zero so the microkernel needs no tail case. Returns whether any
// value is NaN, infinite or above pr.bound in magnitude: the scan rides on the copy.
template <typename T, int L> VQ_INLINE bool pack_rows(const Problem& pr, int64_t row0, int64_t rows, int MR, float* dst) {
  using VF = typename Vec<L>::f;
  using VI = typename Vec<L>::i;
  const T* z = static_cast<const T*>(pr.z);
  const int64_t D = pr.D, padded = (rows + MR - 1) / MR * MR;
  const AboveBound<L> above(pr.bound);
  VI bad = VI{};
  bool bad_tail = false;
  for (int64_t r = 0; r < padded; ++r) {
    float* out = dst + r * D;
    if (row0 + r >= pr.N) {
      std::fill_n(out, D, 0.f);
      continue;
    }
    const T* src = z + (row0 + r) * D;
    int64_t d = 0;
    for (; d + L <= D; d += L) {
      const VF x = load_floats<T, L>(src + d);
      bad |= above(x);
      vstore(out + d, x - vload<VF>(pr.mu + d));
    }
    for (; d < D; ++d) {
      const float x = static_cast<float>(src[d]);
      bad_tail |= !(std::fabs(x) <= pr.bound);
      out[d] = x - pr.mu[d];
    }
  }
  for (int l = 0; l < L; ++l) bad_tail |= bad[l] != 0;
  return bad_tail;
}

// sum((a - b)^2) over D, in L float32 lanes then the lane sum.
template <typename T, int L> VQ_INLINE float exact_sqdist(const T* a, const T* b, int64_t D) {
  using VF = typename Vec<L>::f;
  VF acc = VF{};
  int64_t d = 0;
  for (; d + L <= D; d += L) {
    const VF t = load_floats<T, L>(a + d) - load_floats<T, L>(b + d);
    acc += t * t;
  }
  float s = 0.f;
  for (int l = 0; l < L; ++l) s += acc[l];
  for (; d < D; ++d) {
    const float t = static_cast<float>(a[d]) - static_cast<float>(b[d]);
    s += t * t;
  }
  return s;
}

// Writes row's k results: exact distances, sorted by (distance, index).
template <typename T, int L> VQ_INLINE void finish_row(const Problem& pr, int64_t row, const int32_t* cand) {
  const int64_t k = pr.k, D = pr.D;
  const T* zr = static_cast<const T*>(pr.z) + row * D;
  const T* cb = static_cast<const T*>(pr.codebook);
  int64_t* oi = pr.out_idx + row * k;
  float* od = pr.out_dist + row * k;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t c = cand[j];
    ordered_insert(od, oi, j, exact_sqdist<T, L>(zr, cb + c * D, D), c);
  }
}

}  // namespace
}  // namespace vqfast
