// Fused nearest-codebook search on the CPU: distance GEMM + running argmin/top-k in
// one pass over cache-sized tiles, so the (N, K) distance matrix never exists.
//
// Ranking uses ||c - mu||^2 - 2 (z - mu).(c - mu) (||z - mu||^2 is constant per row).
// The centre mu is the codebook mean rounded to a multiple of q, the power of two
// just above the codebook's RMS spread: a common offset no longer costs precision in
// the expanded form, while data on a coarse grid (small integers, say) stay exact, so
// exactly tied distances stay tied and go to the lower index. The k winners'
// distances are then recomputed exactly as sum((z - c)^2) and re-sorted by
// (distance, index).
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

// Centres rows [row0, row0 + rows) into dst (rows rounded up to MR, row-major (., D));
// rows past N are zero so the microkernel needs no tail case. Returns whether any
// value is NaN, infinite or above pr.bound in magnitude: the scan rides on the copy.
template <typename T, int L> VQ_INLINE bool pack_rows(const Problem& pr, int64_t row0, int64_t rows, int MR, float* dst) {
  using VF = typename Vec<L>::f;
  using VI = typename Vec<L>::i;
  const T* z = static_cast<const T*>(pr.z);
  const int64_t D = pr.D, padded = (rows + MR - 1) / MR * MR;
  // |x| > bound compared on the bit patterns: for non-negative floats they order like
  // the values, and NaN / Inf patterns lie above every finite bound.
  int32_t bound_bits;
  __builtin_memcpy(&bound_bits, &pr.bound, sizeof(bound_bits));
  const VI magnitude = VI{} + 0x7fffffff, bound = VI{} + bound_bits;
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
      bad |= (vload<VI>(&x) & magnitude) > bound;
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
#endif
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
      __builtin_cpu_supports("avx512bw"))
    v.push_back({"avx512", blocks_avx512, 8, 32});
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) v.push_back({"avx2", blocks_avx2, 6, 16});
#endif
  v.push_back({"generic", blocks_generic, 4, 8});
  return v;
}

Variant pick_variant(const std::string& isa) {
  const auto vs = supported_variants();
  if (isa == "auto") return vs.front();
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

// Returns whether any code value fails pr.bound (nothing is packed then).
template <typename T> bool pack_codebook_t(const Problem& pr, float* mu, float* packed, float* cnorm) {
  const T* cb = static_cast<const T*>(pr.codebook);
  const int64_t K = pr.K, D = pr.D, NR = pr.NR;
  std::vector<double> sum(D, 0.0), sumsq(D, 0.0);
  bool bad = false;
  for (int64_t c = 0; c < K; ++c)
    for (int64_t d = 0; d < D; ++d) {
      const double x = static_cast<float>(cb[c * D + d]);
      bad |= !(std::fabs(x) <= pr.bound);
      sum[d] += x;
      sumsq[d] += x * x;
    }
  if (bad) return true;
  centre_from_stats(sum, sumsq, K, mu);
  at::parallel_for(0, pr.P, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t j = 0; j < NR; ++j) {
        const int64_t c = p * NR + j;
        float norm = 0.f;
        for (int64_t d = 0; d < D; ++d) {
          const float x = c < K ? static_cast<float>(cb[c * D + d]) - mu[d] : 0.f;
          packed[(p * D + d) * NR + j] = x;
          norm += x * x;
        }
        cnorm[c] = c < K ? norm : kInf;
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

  const Variant var = pick_variant(isa);
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

  const auto f32 = z.options().dtype(at::kFloat);
  at::Tensor mu = at::empty({D}, f32), packed = at::empty({pr.P, D, var.NR}, f32), cnorm = at::empty({pr.P * var.NR}, f32);
  pr.out_idx = idx.data_ptr<int64_t>();
  pr.out_dist = dist.data_ptr<float>();
  float *m = mu.data_ptr<float>(), *pk = packed.data_ptr<float>(), *cn = cnorm.data_ptr<float>();
  const bool bad_codes = pr.st == at::kFloat  ? pack_codebook_t<float>(pr, m, pk, cn)
                         : pr.st == at::kHalf ? pack_codebook_t<c10::Half>(pr, m, pk, cn)
                                              : pack_codebook_t<c10::BFloat16>(pr, m, pk, cn);
  if (bad_codes) {  // z is named first when both are bad, as the Python checks order them
    raise_if_bad(z, "z");
    raise_if_bad(cb, "codebook");
    TORCH_INTERNAL_ASSERT(false, "nearest_code_cpu: a code failed the value bound but no row was named");
  }
  pr.mu = mu.data_ptr<float>();
  pr.packed = packed.data_ptr<float>();
  pr.cnorm = cnorm.data_ptr<float>();

  const int64_t blocks = (N + pr.RB - 1) / pr.RB;
  std::atomic<bool> bad_z{false};
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    if (var.fn(pr, b0, b1)) bad_z = true;
  });
  if (bad_z) raise_if_bad(z, "z");
  return {idx, dist};
}

}  // namespace vqfast
