// nearest_code on the CPU, the bfloat16 variants (AMX tiles, AVX512-BF16 dot products):
// bfloat16 products bound each distance (the proof below), and only the codes whose
// interval can hold a row's k-th smallest are recomputed exactly.
#pragma once
#include "nearest_code_f32.h"

// AMX intrinsics arrived in GCC 11 and Clang 12: older compilers build without the bfloat16
// variants (as does -DVQ_NO_AMX, which CI uses to check that build).
#if defined(VQ_HAVE_X86_VARIANTS) && !defined(VQ_NO_AMX) && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define VQ_HAVE_AMX 1
namespace vqfast {
namespace {  // included by nearest_code.cpp only: one translation unit, so each ISA variant inlines all it calls

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

}  // namespace
}  // namespace vqfast
#endif  // VQ_HAVE_AMX
