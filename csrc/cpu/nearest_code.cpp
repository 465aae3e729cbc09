// Fused nearest-codebook search on the CPU: distance GEMM + running argmin/top-k in
// one pass over cache-sized tiles, so the (N, K) distance matrix never exists.
//
// Ranking uses ||c - mu||^2 - 2 (z - mu).(c - mu) (||z - mu||^2 is constant per row).
// The centre mu is the codebook mean rounded to a multiple of q, the power of two
// just above the codebook's RMS spread: a common offset no longer costs precision in
// the expanded form, while data on a coarse grid (small integers, say) stay exact, so
// exactly tied distances stay tied and go to the lower index. The k winners'
// distances are then recomputed exactly as sum((z - c)^2) and re-sorted by
// (distance, index). The bfloat16 variants (bf16_blocks: AMX tiles, or AVX512-BF16 dot
// products) rank nothing in reduced precision: their bfloat16 products bound each
// distance, and the bounds pick the codes to recompute.
//
// Values are checked on the way: the row packing and the codebook statistics already
// read every value, so a NaN, an Inf or a value whose squared distances overflow
// float32 costs no extra pass, and only then does an error path find the row to name.
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

namespace vqfast {
namespace {

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
    const float d = exact_sqdist<T, L>(zr, cb + c * D, D);
    int64_t pos = j;  // insertion sort: k is small and the input nearly sorted
    while (pos > 0 && (od[pos - 1] > d || (od[pos - 1] == d && oi[pos - 1] > c))) {
      od[pos] = od[pos - 1];
      oi[pos] = oi[pos - 1];
      --pos;
    }
    od[pos] = d;
    oi[pos] = c;
  }
}

// Inserts (d, c) into a row's ascending top-k list; codes arrive in increasing index
// order, so an equal distance never displaces an earlier (lower) index.
VQ_INLINE void topk_insert(float* tv, int32_t* ti, int64_t k, float d, int32_t c) {
  int64_t pos = k - 1;
  while (pos > 0 && tv[pos - 1] > d) {
    tv[pos] = tv[pos - 1];
    ti[pos] = ti[pos - 1];
    --pos;
  }
  tv[pos] = d;
  ti[pos] = c;
}

// Processes row blocks [blk0, blk1). L lanes per vector, MR rows x NV vectors per
// register tile (MR * NV accumulators), NR = L * NV codes per packed panel. Returns
// whether any z value failed the bound (the results are then not to be used).
template <typename T, int L, int MR, int NV> VQ_INLINE bool process_blocks(const Problem& pr, int64_t blk0, int64_t blk1) {
  using VF = typename Vec<L>::f;
  using VI = typename Vec<L>::i;
  constexpr int NR = L * NV;
  const int64_t D = pr.D, RB = pr.RB, k = pr.k;

  std::vector<float> zp(RB * D);
  std::vector<float> bestv(k == 1 ? RB * L : 0), topv(k > 1 ? RB * k : 0);
  std::vector<int32_t> besti(k == 1 ? RB * L : 0), topi(k > 1 ? RB * k : 0), cand(k);
  alignas(64) float tile[MR * NR];
  VI iota;
  for (int l = 0; l < L; ++l) iota[l] = l;
  bool bad = false;

  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const int64_t row0 = blk * RB, rows = std::min(RB, pr.N - row0);
    const int64_t groups = (rows + MR - 1) / MR;
    bad |= pack_rows<T, L>(pr, row0, rows, MR, zp.data());
    if (k == 1) {
      std::fill(bestv.begin(), bestv.end(), kInf);
      std::fill(besti.begin(), besti.end(), 0);
    } else {
      std::fill(topv.begin(), topv.end(), kInf);
      std::fill(topi.begin(), topi.end(), 0);
    }

    // Panels outer: one panel (D x NR floats) stays in L1 while every row group of the
    // block, itself L2 resident, passes over it.
    for (int64_t p = 0; p < pr.P; ++p) {
      const float* b = pr.packed + p * D * NR;
      for (int64_t g = 0; g < groups; ++g) {
        const float* a = zp.data() + g * D * MR;
        VF acc[MR][NV];
        for (int r = 0; r < MR; ++r)
          for (int v = 0; v < NV; ++v) acc[r][v] = VF{};
        for (int64_t d = 0; d < D; ++d) {
          VF bb[NV];
          for (int v = 0; v < NV; ++v) bb[v] = vload<VF>(b + d * NR + v * L);
          for (int r = 0; r < MR; ++r) {
            const float ar = a[r * D + d];
            for (int v = 0; v < NV; ++v) acc[r][v] += bb[v] * ar;
          }
        }
        const float* cn = pr.cnorm + p * NR;
        if (k == 1) {
          for (int r = 0; r < MR; ++r) {
            float* bvp = bestv.data() + (g * MR + r) * L;
            int32_t* bip = besti.data() + (g * MR + r) * L;
            VF best = vload<VF>(bvp);
            VI bidx = vload<VI>(bip);
            for (int v = 0; v < NV; ++v) {
              const VF dist = vload<VF>(cn + v * L) - acc[r][v] * 2.0f;
              const VI m = dist < best;
              best = m ? dist : best;
              bidx = m ? iota + static_cast<int32_t>(p * NR + v * L) : bidx;
            }
            vstore(bvp, best);
            vstore(bip, bidx);
          }
        } else {
          for (int r = 0; r < MR; ++r)
            for (int v = 0; v < NV; ++v) vstore(tile + r * NR + v * L, vload<VF>(cn + v * L) - acc[r][v] * 2.0f);
          for (int r = 0; r < MR; ++r) {
            float* tv = topv.data() + (g * MR + r) * k;
            int32_t* ti = topi.data() + (g * MR + r) * k;
            for (int j = 0; j < NR; ++j)
              if (tile[r * NR + j] < tv[k - 1])
                topk_insert(tv, ti, k, tile[r * NR + j], static_cast<int32_t>(p * NR + j));
          }
        }
      }
    }

    for (int64_t r = 0; r < rows; ++r) {
      if (k == 1) {
        // Lanes hold per-lane winners; the lowest index wins among equal values.
        const float* bvp = bestv.data() + r * L;
        const int32_t* bip = besti.data() + r * L;
        float bv = bvp[0];
        int32_t bi = bip[0];
        for (int l = 1; l < L; ++l)
          if (bvp[l] < bv || (bvp[l] == bv && bip[l] < bi)) {
            bv = bvp[l];
            bi = bip[l];
          }
        cand[0] = bi;
      } else {
        std::copy_n(topi.data() + r * k, k, cand.data());
      }
      finish_row<T, L>(pr, row0 + r, cand.data());
    }
  }
  return bad;
}

template <int L, int MR, int NV> VQ_INLINE bool blocks_for_dtype(const Problem& pr, int64_t b0, int64_t b1) {
  switch (pr.st) {
    case at::kFloat: return process_blocks<float, L, MR, NV>(pr, b0, b1);
    case at::kHalf: return process_blocks<c10::Half, L, MR, NV>(pr, b0, b1);
    default: return process_blocks<c10::BFloat16, L, MR, NV>(pr, b0, b1);
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define VQ_HAVE_X86_VARIANTS 1
// Register tiles: AVX-512 has 32 zmm (16 accumulators), AVX2 16 ymm (12 accumulators).
// Everything a block does (packing, the scan, the exact recompute) is inlined here, so it
// all runs in the variant's ISA with no call back into baseline code.
__attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma"))) bool blocks_avx512(const Problem& pr, int64_t b0,
                                                                                          int64_t b1) {
  return blocks_for_dtype<16, 8, 2>(pr, b0, b1);
}
__attribute__((target("avx2,fma"))) bool blocks_avx2(const Problem& pr, int64_t b0, int64_t b1) {
  return blocks_for_dtype<8, 6, 2>(pr, b0, b1);
}

// AMX intrinsics arrived in GCC 11 and Clang 12: older compilers build without the bfloat16
// variants (as does -DVQ_NO_AMX, which CI uses to check that build).
#if !defined(VQ_NO_AMX) && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define VQ_HAVE_AMX 1
// AMX-BF16 (Sapphire Rapids and later): the expanded-form products of a row block run as
// bfloat16 tile products with float32 accumulation, at several times the float32 GEMM's
// rate. bfloat16 keeps 8 significant bits, so the tile products only narrow the search:
// each code gets a proved interval around its expanded-form value, every code whose
// interval can hold the row's minimum is recomputed exactly as sum((z - c)^2), and the
// minimum of those recomputed distances wins. The answer is therefore the exact
// recompute's own argmin (lower index on ties), which the float32 variants only reach
// where their expanded form ranks right.
//
// AVX512-BF16 (Zen 4 and later, Cooper Lake) computes the same products with vdpbf16ps,
// which like the tiles adds exact bfloat16 products into float32 lanes (round to nearest,
// subnormals flushed): each (row, code) is one lane's sum of Dp products, in at most Dp
// roundings, so the bound below covers it unchanged, whatever order or pairing the
// hardware adds in. The rest (intervals, threshold, recompute) is shared code.
//
// The bound, per (row, code), with x = z - mu and c = code - mu as exact reals, u = 2^-8
// (bfloat16's unit roundoff), v = 2^-24 (float32's), n = Dp and gamma_m = m v / (1 - m v):
// - each value is rounded twice (centring in float32, then to bfloat16) and may be
//   flushed if subnormal (tau = 2^-126): |x~_i - x_i| <= eps |x_i| + tau, eps = u + v + uv;
// - |x~.c~ - x.c| <= (2 eps + eps^2) |x||c| + (1 + eps) tau sqrt(n) (|x| + |c|) + n tau^2;
// - the tile's float32 accumulation of n exact products, flushing subnormal partial sums,
//   adds gamma_n |x~||c~| + n tau;
// - approx = ||c||^2 - 2 x~.c~ also carries the rounding of ||c||^2 (gamma_{n+1} + 3v),
//   of its own subtraction, and of the interval ends approx +- E;
// - |x| and |c| are bounded from the computed norms, which are low by at most
//   gamma_{n+1} + 4v.
// The final recompute is within gamma_{D+4} of the exact distance, so a code can beat the
// interval minimum m only if its lower end is <= m + 2 gamma / (1 - gamma) (||x||^2 + m).
// Every constant is rounded up, and a safety factor 1.01 covers the second-order terms
// and the roundings of evaluating E itself in float32. A non-finite interval (a bound that
// overflowed) makes its code a candidate rather than dropping it.
Problem::Bounds bf16_bounds(int64_t D, int64_t Dp) {
  const double v = 0x1p-24, u = 0x1p-8, tau = 0x1p-126, n = static_cast<double>(Dp);
  const auto gamma = [v](double m) { return m * v / (1.0 - m * v); };
  const double eps = u + v + u * v;
  const double dot = 2 * eps + eps * eps + gamma(n) * (1 + eps) * (1 + eps);  // per |x||c|
  const double rho = gamma(n + 1) + 4 * v;                                  // norm from computed
  const double fold = (1 + rho) * (1 + rho), safety = 1.01 / (1 - v);
  const double A = (2 * dot + 2 * v * (1 + dot) + 2.1 * v) * fold * safety;
  const double B = ((gamma(n + 1) + 3 * v) * 1.01 + 2.01 * v) * safety;
  const double Ct = 5 * std::sqrt(n) * tau * (1 + rho) * safety, Dt = 8 * n * tau * safety;
  const double g = gamma(static_cast<double>(D) + 4);
  return {round_up(A),
          round_up(B),
          round_up(Ct),
          round_up(Dt),
          round_up(fold * (1 + 2 * v)),
          round_up(2 * g / (1 - g) * (1 + 8 * v)),
          round_up(2 * v)};
}

// Whether this CPU has AMX-BF16 and Linux grants this process the tile state (a process
// must ask once; the grant then covers all its threads).
bool amx_usable() {
  static const bool ok = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!((d >> 22) & 1u) || !((d >> 24) & 1u)) return false;  // AMX-BF16, AMX-TILE
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtileData = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtileData) == 0;
  }();
  return ok;
}

struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// One target for both bfloat16 variants: compilers emit AMX instructions only for the tile
// intrinsics, which only the AMX instantiation of bf16_blocks contains.
#define VQ_AMX_TARGET \
  __attribute__((target("amx-tile,amx-bf16,avx512bf16,avx512f,avx512dq,avx512vl,avx512bw,fma")))

// Rows [row0, row0 + rows) centred, rounded to bfloat16 (to nearest, ties to even) into
// dst, (padded, Dp) with zeros past D and past N (padded = rows rounded up to 32), and
// their computed float32 squared norms and norms. Returns whether any value failed the
// bound, as pack_rows does.
template <typename T>
VQ_AMX_TARGET bool pack_rows_bf16(const Problem& pr, int64_t row0, int64_t rows, uint16_t* dst, float* sq, float* nrm) {
  using VF = Vec<16>::f;
  using VI = Vec<16>::i;
  const T* z = static_cast<const T*>(pr.z);
  const int64_t D = pr.D, Dp = pr.Dp, padded = (rows + 31) / 32 * 32;
  const AboveBound<16> above(pr.bound);
  VI bad = VI{};
  bool bad_tail = false;
  for (int64_t r = 0; r < padded; ++r) {
    uint16_t* out = dst + r * Dp;
    if (row0 + r >= pr.N) {
      std::fill_n(out, Dp, uint16_t{0});
      sq[r] = nrm[r] = 0.f;
      continue;
    }
    const T* src = z + (row0 + r) * D;
    VF acc = VF{};
    int64_t d = 0;
    for (; d + 16 <= D; d += 16) {
      const VF x = load_floats<T, 16>(src + d);
      bad |= above(x);
      const VF c = x - vload<VF>(pr.mu + d);
      acc += c * c;
      // vcvtneps2bf16: to nearest even, subnormals flushed (the bound's tau covers both)
      __m512 cv;
      __builtin_memcpy(&cv, &c, sizeof(cv));
      const __m256bh h = _mm512_cvtneps_pbh(cv);
      __builtin_memcpy(out + d, &h, sizeof(h));
    }
    float s = 0.f;
    for (int l = 0; l < 16; ++l) s += acc[l];
    for (; d < D; ++d) {
      const float x = static_cast<float>(src[d]);
      bad_tail |= !(std::fabs(x) <= pr.bound);
      const float c = x - pr.mu[d];
      s += c * c;
      out[d] = to_bf16(c);
    }
    std::fill(out + D, out + Dp, uint16_t{0});
    sq[r] = s;
    nrm[r] = std::sqrt(s);
  }
  for (int l = 0; l < 16; ++l) bad_tail |= bad[l] != 0;
  return bad_tail;
}

// sum((a - b)^2) over D with four independent float32 accumulators and a tree sum: the
// candidates' recompute is latency-bound, and exact_sqdist's one chain costs ~2x here.
template <typename T> VQ_AMX_TARGET VQ_INLINE float amx_sqdist(const T* a, const T* b, int64_t D) {
  using VF = Vec<16>::f;
  VF acc[4] = {VF{}, VF{}, VF{}, VF{}};
  int64_t d = 0;
  for (; d + 64 <= D; d += 64)
    for (int q = 0; q < 4; ++q) {
      const VF t = load_floats<T, 16>(a + d + 16 * q) - load_floats<T, 16>(b + d + 16 * q);
      acc[q] += t * t;
    }
  for (; d + 16 <= D; d += 16) {
    const VF t = load_floats<T, 16>(a + d) - load_floats<T, 16>(b + d);
    acc[0] += t * t;
  }
  const VF all = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  __m512 v;
  __builtin_memcpy(&v, &all, sizeof(v));
  float s = _mm512_reduce_add_ps(v);
  for (; d < D; ++d) {
    const float t = static_cast<float>(a[d]) - static_cast<float>(b[d]);
    s += t * t;
  }
  return s;
}

// Inserts d into an ascending list of the k smallest values seen.
VQ_INLINE void smallest_insert(float* tv, int64_t k, float d) {
  int64_t pos = k - 1;
  while (pos > 0 && tv[pos - 1] > d) {
    tv[pos] = tv[pos - 1];
    --pos;
  }
  tv[pos] = d;
}

// Rows r0..r0+7 of a (row-major (., Dp) bfloat16) times one 32-code panel (b, two B tiles)
// into acc with vdpbf16ps: each row's pair of values broadcast against 16 codes' pairs.
VQ_AMX_TARGET VQ_INLINE void dpbf16_tile(const uint16_t* a, const uint16_t* b, int64_t Dp, int r0, __m512 (&acc)[8][2]) {
  for (int r = 0; r < 8; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t j = 0; j < Dp / 2; ++j) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + j * 32);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + Dp * 16 + j * 32);
    for (int r = 0; r < 8; ++r) {
      uint32_t pair;
      __builtin_memcpy(&pair, a + (r0 + r) * Dp + 2 * j, sizeof(pair));
      const __m512bh x = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], x, b1);
    }
  }
}

// 32 rows times one 32-code panel into c (32 x 32 float32, row stride ldc).
VQ_AMX_TARGET VQ_INLINE void dpbf16_panel(const uint16_t* a, const uint16_t* b, int64_t Dp, float* c, int64_t ldc) {
  for (int r0 = 0; r0 < 32; r0 += 8) {
    __m512 acc[8][2];
    dpbf16_tile(a, b, Dp, r0, acc);
    for (int r = 0; r < 8; ++r) {
      _mm512_storeu_ps(c + (r0 + r) * ldc, acc[r][0]);
      _mm512_storeu_ps(c + (r0 + r) * ldc + 16, acc[r][1]);
    }
  }
}

// dpbf16_panel's products, then each one's interval while it is in a register: the lower
// end lo = approx - e is stored in c in place of the product, the upper end folded into
// the rows' lane minima (hmin, 32 rows x 16 lanes; a NaN end leaves them as they were).
// cn, e1, e0: the panel's 32 codes' ||c||^2 and half-width terms; nrm: the 32 rows' norms.
VQ_AMX_TARGET VQ_INLINE void dpbf16_intervals(const uint16_t* a, const uint16_t* b, int64_t Dp, float* c, int64_t ldc,
                                              const float* cn, const float* e1, const float* e0, const float* nrm,
                                              float* hmin) {
  const __m512 two = _mm512_set1_ps(2.f);
  const __m512 cnv[2] = {_mm512_loadu_ps(cn), _mm512_loadu_ps(cn + 16)};
  const __m512 e1v[2] = {_mm512_loadu_ps(e1), _mm512_loadu_ps(e1 + 16)};
  const __m512 e0v[2] = {_mm512_loadu_ps(e0), _mm512_loadu_ps(e0 + 16)};
  for (int r0 = 0; r0 < 32; r0 += 8) {
    __m512 acc[8][2];
    dpbf16_tile(a, b, Dp, r0, acc);
    for (int r = 0; r < 8; ++r) {
      const __m512 nx = _mm512_set1_ps(nrm[r0 + r]);
      __m512 h = _mm512_loadu_ps(hmin + (r0 + r) * 16);
      for (int v = 0; v < 2; ++v) {
        const __m512 approx = _mm512_fnmadd_ps(two, acc[r][v], cnv[v]);
        const __m512 e = _mm512_fmadd_ps(nx, e1v[v], e0v[v]);
        _mm512_storeu_ps(c + (r0 + r) * ldc + 16 * v, _mm512_sub_ps(approx, e));
        h = _mm512_min_ps(_mm512_add_ps(approx, e), h);
      }
      _mm512_storeu_ps(hmin + (r0 + r) * 16, h);
    }
  }
}

// Row blocks [blk0, blk1): per block, bfloat16 products into s (rows x Kp float32), on
// AMX tiles or with vdpbf16ps, then per row the intervals, the threshold and the exact
// recompute of the candidates.
template <typename T, bool Amx> VQ_AMX_TARGET bool bf16_blocks(const Problem& pr, int64_t blk0, int64_t blk1) {
  const int64_t D = pr.D, Dp = pr.Dp, RB = pr.RB, k = pr.k, K = pr.K, Kp = pr.P * 32;
  const Problem::Bounds bd = pr.bf16;
  // vdpbf16ps leaves the products in registers: for k <= 16 the intervals are taken there
  const bool fused = !Amx && k <= 16;
  std::vector<uint16_t> zp(RB * Dp);
  std::vector<float> s(RB * Kp), sq(RB), nrm(RB), hv(k), tv(k), hm(fused ? RB * 16 : 0);
  std::vector<int32_t> ti(k);
  if constexpr (Amx) {
    TileConfig cfg{};
    cfg.palette = 1;
    for (int t = 0; t < 8; ++t) {
      cfg.rows[t] = 16;
      cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
  }
  const T* cb = static_cast<const T*>(pr.codebook);
  const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  bool bad = false;

  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const int64_t row0 = blk * RB, rows = std::min(RB, pr.N - row0), padded = (rows + 31) / 32 * 32;
    if (pack_rows_bf16<T>(pr, row0, rows, zp.data(), sq.data(), nrm.data())) {
      bad = true;  // the caller raises; nothing of this block is used
      continue;
    }
    std::fill(hm.begin(), hm.end(), kInf);
    for (int64_t g = 0; g < padded; g += 32) {
      const uint16_t* a = zp.data() + g * Dp;
      for (int64_t p = 0; p < pr.P; ++p) {
        const uint16_t* b = pr.packed_bf16 + p * Dp * 32;
        float* c = s.data() + g * Kp + p * 32;
        if constexpr (Amx) {
          // 32 rows x 32 codes per step: four accumulator tiles (0-3), two row tiles (4, 5)
          // and two code tiles (6, 7), all 16 x 64 bytes.
          _tile_zero(0);
          _tile_zero(1);
          _tile_zero(2);
          _tile_zero(3);
          for (int64_t d = 0; d < Dp; d += 32) {
            _tile_loadd(4, a + d, Dp * 2);
            _tile_loadd(5, a + 16 * Dp + d, Dp * 2);
            _tile_loadd(6, b + d * 16, 64);
            _tile_loadd(7, b + Dp * 16 + d * 16, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
          }
          _tile_stored(0, c, Kp * 4);
          _tile_stored(1, c + 16, Kp * 4);
          _tile_stored(2, c + 16 * Kp, Kp * 4);
          _tile_stored(3, c + 16 * Kp + 16, Kp * 4);
        } else if (fused) {
          dpbf16_intervals(a, b, Dp, c, Kp, pr.cnorm + p * 32, pr.cerr1 + p * 32, pr.cerr0 + p * 32, nrm.data() + g,
                           hm.data() + g * 16);
        } else {
          dpbf16_panel(a, b, Dp, c, Kp);
        }
      }
    }

    for (int64_t r = 0; r < rows; ++r) {
      float* sr = s.data() + r * Kp;
      const __m512 nx = _mm512_set1_ps(nrm[r]), two = _mm512_set1_ps(2.f);
      // Pass 1: intervals [lo, hi] (lo kept in place of the products) and an upper bound on
      // the k-th smallest hi. Any k codes' largest hi bounds it; for k <= 16 the lanes'
      // minima (each over its own codes) give k such codes at no extra cost, and a looser
      // bound only admits more candidates to the exact recompute. The vdpbf16ps variant
      // did this for k <= 16 while the products were in registers (dpbf16_intervals).
      __m512 hmin = fused ? _mm512_loadu_ps(hm.data() + r * 16) : _mm512_set1_ps(kInf);
      if (k > 16) std::fill(hv.begin(), hv.end(), kInf);
      for (int64_t j = 0; j < (fused ? 0 : Kp); j += 16) {
        const __m512 approx = _mm512_fnmadd_ps(two, _mm512_loadu_ps(sr + j), _mm512_loadu_ps(pr.cnorm + j));
        const __m512 e = _mm512_fmadd_ps(nx, _mm512_loadu_ps(pr.cerr1 + j), _mm512_loadu_ps(pr.cerr0 + j));
        const __m512 hi = _mm512_add_ps(approx, e);
        _mm512_storeu_ps(sr + j, _mm512_sub_ps(approx, e));
        if (k <= 16) {
          hmin = _mm512_min_ps(hi, hmin);  // a NaN hi leaves hmin as it was
        } else {
          __mmask16 m = _mm512_cmp_ps_mask(hi, _mm512_set1_ps(hv[k - 1]), _CMP_LT_OQ);
          alignas(64) float h[16];
          _mm512_store_ps(h, hi);
          for (; m; m &= m - 1) {
            const int l = __builtin_ctz(m);
            if (h[l] < hv[k - 1]) smallest_insert(hv.data(), k, h[l]);
          }
        }
      }
      float top;
      if (k == 1) {
        top = _mm512_reduce_min_ps(hmin);
      } else if (k <= 16) {
        alignas(64) float lanes[16];
        _mm512_store_ps(lanes, hmin);
        std::nth_element(lanes, lanes + k - 1, lanes + 16);
        top = lanes[k - 1];
      } else {
        top = hv[k - 1];
      }
      const float rh = sq[r] * bd.rfac, ends = rh + top;
      float thr = top + ((ends > 0.f ? ends * bd.cG : 0.f) + (rh + 2.f * std::fabs(top)) * bd.slack);
      if (!(thr < kInf)) thr = kInf;  // an overflowed bound: every code is a candidate

      // Pass 2: the exact recompute of every code whose lower end can reach the threshold.
      const T* zr = static_cast<const T*>(pr.z) + (row0 + r) * D;
      std::fill(tv.begin(), tv.end(), kInf);
      std::fill(ti.begin(), ti.end(), 0);
      const __m512 t = _mm512_set1_ps(thr);
      for (int64_t j = 0; j < Kp; j += 16) {
        const __mmask16 valid = _mm512_cmplt_epi32_mask(_mm512_add_epi32(iota, _mm512_set1_epi32(j)), _mm512_set1_epi32(K));
        for (__mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(sr + j), t, _CMP_NGT_UQ) & valid; m; m &= m - 1) {
          const int32_t c = static_cast<int32_t>(j + __builtin_ctz(m));
          const float dist = amx_sqdist<T>(zr, cb + c * D, D);
          if (dist < tv[k - 1]) topk_insert(tv.data(), ti.data(), k, dist, c);  // codes in increasing order
        }
      }
      std::copy_n(ti.data(), k, pr.out_idx + (row0 + r) * k);
      std::copy_n(tv.data(), k, pr.out_dist + (row0 + r) * k);
    }
  }
  if constexpr (Amx) _tile_release();
  return bad;
}

template <bool Amx> VQ_AMX_TARGET bool blocks_bf16(const Problem& pr, int64_t b0, int64_t b1) {
  switch (pr.st) {
    case at::kFloat: return bf16_blocks<float, Amx>(pr, b0, b1);
    case at::kHalf: return bf16_blocks<c10::Half, Amx>(pr, b0, b1);
    default: return bf16_blocks<c10::BFloat16, Amx>(pr, b0, b1);
  }
}

#endif  // __linux__
#endif  // VQ_HAVE_X86_VARIANTS
// Baseline ISA (SSE2 on x86-64, NEON on aarch64).
bool blocks_generic(const Problem& pr, int64_t b0, int64_t b1) { return blocks_for_dtype<4, 4, 2>(pr, b0, b1); }

struct Variant {
  const char* name;
  bool (*fn)(const Problem&, int64_t, int64_t);
  int MR, NR;
};

std::vector<Variant> supported_variants() {
  std::vector<Variant> v;
#ifdef VQ_HAVE_X86_VARIANTS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw")) {
#ifdef VQ_HAVE_AMX
    if (__builtin_cpu_supports("avx512bf16")) {
      if (amx_usable()) v.push_back({"amx", blocks_bf16<true>, 32, 32});
      v.push_back({"avx512bf16", blocks_bf16<false>, 32, 32});
    }
#endif
    v.push_back({"avx512", blocks_avx512, 8, 32});
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) v.push_back({"avx2", blocks_avx2, 6, 16});
#endif
  v.push_back({"generic", blocks_generic, 4, 8});
  return v;
}

bool bounded_bf16(const char* name) { return std::string(name) == "amx" || std::string(name) == "avx512bf16"; }

// "auto": the first variant, except that for k = 1 a bfloat16 one is passed over where the
// per-code interval work outweighs the short products: AMX for D <= 32 (measured 0.4-0.75x
// AVX-512), AVX512-BF16 for D <= 16 (Zen 4: 0.66x at D = 3 and 8, 0.9-1.1x at D = 16,
// 0.9-1.2x at D = 24, 1.0-1.3x at D = 32). For k > 1 both win everywhere measured, their
// epilogue being cheaper than the float32 top-k's.
bool passed_over(const Variant& v, int64_t D, int64_t k) {
  if (k > 1) return false;
  const std::string name = v.name;
  return (name == "amx" && D <= 32) || (name == "avx512bf16" && D <= 16);
}

Variant pick_variant(const std::string& isa, int64_t D, int64_t k) {
  const auto vs = supported_variants();
  if (isa == "auto")
    for (const auto& v : vs)
      if (!passed_over(v, D, k)) return v;
  std::string names;
  for (const auto& v : vs) {
    if (isa == v.name) return v;
    names += std::string(names.empty() ? "" : ", ") + v.name;
  }
  TORCH_CHECK(false, "isa='", isa, "' is not available on this CPU; available: ", names);
}

// mu[d] = q * round(mean[d] / q), q = 2^ceil(log2(RMS spread)); see the file comment.
void centre_from_stats(const std::vector<double>& sum, const std::vector<double>& sumsq, int64_t K, float* mu) {
  const int64_t D = static_cast<int64_t>(sum.size());
  double var = 0.0;
  for (int64_t d = 0; d < D; ++d) {
    const double m = sum[d] / K;
    var += std::max(0.0, sumsq[d] / K - m * m);
  }
  const double spread = std::sqrt(var / D);
  int e = 0;
  std::frexp(spread, &e);
  const double q = std::ldexp(1.0, e);
  for (int64_t d = 0; d < D; ++d) {
    const double m = sum[d] / K;
    mu[d] = static_cast<float>(spread > 0.0 ? q * std::nearbyint(m / q) : m);
  }
}

// Centres and packs the codebook: cnorm (P * NR,) and, for the float32 variants, packed
// (P, D, NR) panels; with tiles (the bfloat16 variants, NR = 32) instead each panel as two bfloat16 B tiles of 16 codes,
// (Dp / 2, 16, 2) each (pairs of consecutive d per code, the layout of AMX and vdpbf16ps, zero past D), and
// cerr1 / cerr0, each code's interval half-width terms (Problem). Returns whether any code value fails pr.bound
// (nothing is packed then).
template <typename T>
bool pack_codebook_t(const Problem& pr, float* mu, float* packed, float* cnorm, uint16_t* tiles, float* cerr) {
  using VF = Vec<8>::f;
  const T* cb = static_cast<const T*>(pr.codebook);
  const int64_t K = pr.K, D = pr.D, NR = pr.NR, Dp = pr.Dp;
  std::vector<double> sum(D, 0.0), sumsq(D, 0.0);
  uint32_t bound_bits, bad = 0;
  __builtin_memcpy(&bound_bits, &pr.bound, sizeof(bound_bits));
  for (int64_t c = 0; c < K; ++c)  // d innermost, branch-free: the compiler vectorises it
    for (int64_t d = 0; d < D; ++d) {
      const float x = static_cast<float>(cb[c * D + d]);
      uint32_t bits;
      __builtin_memcpy(&bits, &x, sizeof(bits));
      bad |= (bits & 0x7fffffffu) > bound_bits;  // NaN and Inf patterns lie above any bound
      sum[d] += x;
      sumsq[d] += static_cast<double>(x) * x;
    }
  if (bad) return true;
  centre_from_stats(sum, sumsq, K, mu);
  at::parallel_for(0, pr.P, 1, [&](int64_t p0, int64_t p1) {
    std::vector<float> rows(NR * D);  // the panel's centred codes, row-major
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t j = 0; j < NR; ++j) {
        const int64_t c = p * NR + j;
        float* x = rows.data() + j * D;
        if (c >= K) {
          std::fill_n(x, D, 0.f);
          cnorm[c] = kInf;
          continue;
        }
        VF acc = VF{};
        int64_t d = 0;
        for (; d + 8 <= D; d += 8) {
          const VF v = load_floats<T, 8>(cb + c * D + d) - vload<VF>(mu + d);
          acc += v * v;
          vstore(x + d, v);
        }
        float norm = 0.f;
        for (int l = 0; l < 8; ++l) norm += acc[l];
        for (; d < D; ++d) {
          x[d] = static_cast<float>(cb[c * D + d]) - mu[d];
          norm += x[d] * x[d];
        }
        cnorm[c] = norm;
      }
      if (tiles == nullptr) {  // the float32 panels; the bfloat16 variants read only the tiles
        for (int64_t d = 0; d < D; ++d)
          for (int64_t j = 0; j < NR; ++j) packed[(p * D + d) * NR + j] = rows[j * D + d];
        continue;
      }
      for (int64_t h = 0; h < 2; ++h) {
        uint16_t* tile = tiles + (p * 2 + h) * Dp * 16;
        for (int64_t d = 0; d < Dp; ++d)
          for (int64_t j = 0; j < 16; ++j)
            tile[((d / 2) * 16 + j) * 2 + d % 2] = d < D ? to_bf16(rows[(h * 16 + j) * D + d]) : uint16_t{0};
      }
      // A |x||c| + B ||c||^2 + Ct (|x| + |c|) + Dt = |x| cerr1 + cerr0, folded in double and
      // rounded up; the one float32 fma left per product is within the bounds' safety factor.
      const Problem::Bounds& bd = pr.bf16;
      for (int64_t j = 0; j < NR; ++j) {
        const int64_t c = p * NR + j;
        const double nc = c < K ? std::sqrt(cnorm[c]) : 0.f;  // the float32 norm the bound is proved for
        cerr[c] = round_up(bd.A * nc + bd.Ct);
        cerr[pr.P * NR + c] = c < K ? round_up(bd.B * cnorm[c] + bd.Ct * nc + bd.Dt) : kInf;
      }
    }
  });
  return false;
}

// The error path: a ValueError naming t and its first row with a NaN / Inf or, failing
// that, with a value above the bound (the Python layer's check_finite messages).
void raise_if_bad(const at::Tensor& t, const char* name) {
  const at::Tensor f = t.to(at::kFloat);
  const at::Tensor nonfinite = f.isfinite().logical_not().any(1);
  if (nonfinite.any().item<bool>())
    TORCH_CHECK_VALUE(false, name, " contains NaN or Inf (first at row ", nonfinite.nonzero()[0][0].item<int64_t>(),
                      ")");
  const at::Tensor big = f.abs().gt(value_bound(t.size(1))).any(1);
  if (big.any().item<bool>()) {
    char text[32];
    std::snprintf(text, sizeof(text), "%.3g", overflow_bound(t.size(1)));
    TORCH_CHECK_VALUE(false, name, " holds values of magnitude above ", text, " (first at row ",
                      big.nonzero()[0][0].item<int64_t>(), "): their squared distances overflow float32");
  }
}

}  // namespace

std::vector<std::string> cpu_isas() {
  std::vector<std::string> out;
  for (const auto& v : supported_variants()) out.emplace_back(v.name);
  return out;
}

std::string nearest_code_cpu_isa(int64_t D, int64_t k) {
  TORCH_CHECK_VALUE(D >= 1, "D must be >= 1, got ", D);
  TORCH_CHECK_VALUE(k >= 1, "k must be >= 1, got ", k);
  return pick_variant("auto", D, k).name;
}

std::tuple<at::Tensor, at::Tensor> nearest_code_cpu(const at::Tensor& z_in, const at::Tensor& cb_in, int64_t k,
                                                    const std::string& isa) {
  check_nearest_code_args(z_in, cb_in, k);
  check_cpu("nearest_code_cpu", {&z_in, &cb_in});
  TORCH_CHECK(cb_in.size(0) <= std::numeric_limits<int32_t>::max(), "codebook is too large (K >= 2^31)");
  const at::Tensor z = z_in.contiguous(), cb = cb_in.contiguous();
  const int64_t N = z.size(0), K = cb.size(0), D = z.size(1);
  at::Tensor idx = at::empty({N, k}, z.options().dtype(at::kLong));
  at::Tensor dist = at::empty({N, k}, z.options().dtype(at::kFloat));
  if (N == 0) return {idx, dist};

  const Variant var = pick_variant(isa, D, k);
  Problem pr{};
  pr.z = z.data_ptr();
  pr.codebook = cb.data_ptr();
  pr.st = z.scalar_type();
  pr.N = N;
  pr.K = K;
  pr.D = D;
  pr.k = k;
  pr.bound = value_bound(D);
  pr.NR = var.NR;
  pr.P = (K + var.NR - 1) / var.NR;
  pr.RB = var.MR * std::clamp<int64_t>(kRowBlockFloats / (D * var.MR), 1, 16);
  const bool bf16 = bounded_bf16(var.name);
#ifdef VQ_HAVE_AMX
  if (bf16) {
    pr.Dp = std::string(var.name) == "amx" ? (D + 31) / 32 * 32 : (D + 1) / 2 * 2;
    // A block's bfloat16 rows and its float32 products (rows x Kp) stay near 256 KiB (L2).
    const int64_t row_bytes = pr.Dp * 2 + pr.P * pr.NR * 4;
    pr.RB = 32 * std::clamp<int64_t>((int64_t{256} << 10) / (32 * row_bytes), 1, 4);
    pr.bf16 = bf16_bounds(D, pr.Dp);
  }
#endif

  const auto f32 = z.options().dtype(at::kFloat);
  at::Tensor mu = at::empty({D}, f32), packed = at::empty({bf16 ? 0 : pr.P * D * var.NR}, f32), cnorm = at::empty({pr.P * var.NR}, f32);
  at::Tensor tiles = at::empty({bf16 ? pr.P * pr.Dp * pr.NR : 0}, z.options().dtype(at::kShort));
  at::Tensor cerr = at::empty({bf16 ? 2 * pr.P * pr.NR : 0}, f32);
  pr.out_idx = idx.data_ptr<int64_t>();
  pr.out_dist = dist.data_ptr<float>();
  float *m = mu.data_ptr<float>(), *pk = packed.data_ptr<float>(), *cn = cnorm.data_ptr<float>();
  uint16_t* tl = bf16 ? reinterpret_cast<uint16_t*>(tiles.data_ptr<int16_t>()) : nullptr;
  float* ce = bf16 ? cerr.data_ptr<float>() : nullptr;
  const bool bad_codes = pr.st == at::kFloat  ? pack_codebook_t<float>(pr, m, pk, cn, tl, ce)
                         : pr.st == at::kHalf ? pack_codebook_t<c10::Half>(pr, m, pk, cn, tl, ce)
                                              : pack_codebook_t<c10::BFloat16>(pr, m, pk, cn, tl, ce);
  if (bad_codes) {  // z is named first when both are bad, as the Python checks order them
    raise_if_bad(z, "z");
    raise_if_bad(cb, "codebook");
    TORCH_INTERNAL_ASSERT(false, "nearest_code_cpu: a code failed the value bound but no row was named");
  }
  pr.mu = mu.data_ptr<float>();
  pr.packed = packed.data_ptr<float>();
  pr.cnorm = cnorm.data_ptr<float>();
  pr.packed_bf16 = tl;
  pr.cerr1 = ce;
  pr.cerr0 = bf16 ? ce + pr.P * pr.NR : nullptr;

  const int64_t blocks = (N + pr.RB - 1) / pr.RB;
  std::atomic<bool> bad_z{false};
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    if (var.fn(pr, b0, b1)) bad_z = true;
  });
  if (bad_z) raise_if_bad(z, "z");
  return {idx, dist};
}

}  // namespace vqfast
