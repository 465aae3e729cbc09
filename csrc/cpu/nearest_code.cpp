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
//
// The kernels live in nearest_code_common.h (shared pieces), nearest_code_f32.h (float32
// microkernel) and nearest_code_bf16.h (bfloat16 bound proof, AMX and AVX512-BF16); this
// file chooses the ISA variant, packs the codebook and is the entry point.
#include "nearest_code_bf16.h"

namespace vqfast {
namespace {

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
