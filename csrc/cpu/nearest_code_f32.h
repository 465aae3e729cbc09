// nearest_code on the CPU, the float32 variants: the register-tiled microkernel
// (distance GEMM in the expanded form, running argmin / top-k) over packed row blocks and
// code panels, instantiated for AVX-512, AVX2 and the baseline ISA.
#pragma once
#include "nearest_code_common.h"

namespace vqfast {
namespace {  // included by nearest_code.cpp only: one translation unit, so each ISA variant inlines all it calls

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
#endif  // VQ_HAVE_X86_VARIANTS

// Baseline ISA (SSE2 on x86-64, NEON on aarch64).
bool blocks_generic(const Problem& pr, int64_t b0, int64_t b1) { return blocks_for_dtype<4, 4, 2>(pr, b0, b1); }

}  // namespace
}  // namespace vqfast
