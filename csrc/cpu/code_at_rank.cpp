// The code at a given rank of each row's distance order, on the CPU. Rows go in chunks:
// one GEMM gives a chunk's ranking keys ||e||^2 - 2 z.e (||z||^2 is constant per row, so
// it is left out), then each row's code is found by selection (std::nth_element, O(K)
// per row on average) instead of a sort. The (N, K) matrix is never built: a chunk
// holds at most kChunkElems keys.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <numeric>
#include <vector>

#include "../checks.h"

namespace vqfast {
namespace {

constexpr int64_t kChunkElems = int64_t(1) << 22;  // 16 MiB of float32 keys per chunk

template <typename T>
void select_rows(const T* keys, const int64_t* rank, int64_t rows, int64_t K, int64_t* out) {
  at::parallel_for(0, rows, 8, [&](int64_t r0, int64_t r1) {
    std::vector<int32_t> order(K);
    for (int64_t r = r0; r < r1; ++r) {
      const T* d = keys + r * K;
      std::iota(order.begin(), order.end(), 0);
      // (key, index) order: equal keys rank by lower index, as a stable sort would.
      std::nth_element(order.begin(), order.begin() + rank[r], order.end(), [d](int32_t a, int32_t b) {
        return d[a] < d[b] || (d[a] == d[b] && a < b);
      });
      out[r] = order[rank[r]];
    }
  });
}

}  // namespace

at::Tensor code_at_rank_cpu(const at::Tensor& z_in, const at::Tensor& codebook_in, const at::Tensor& rank_in) {
  check_cpu("code_at_rank_cpu", {&z_in, &codebook_in, &rank_in});
  TORCH_CHECK(z_in.dim() == 2 && codebook_in.dim() == 2 && z_in.size(1) == codebook_in.size(1),
              "z must be (N, D) and codebook (K, D), got ", z_in.sizes(), " and ", codebook_in.sizes());
  TORCH_CHECK(z_in.scalar_type() == codebook_in.scalar_type(), "z and codebook must share a dtype");
  TORCH_CHECK(z_in.scalar_type() == at::kFloat || z_in.scalar_type() == at::kDouble,
              "code_at_rank_cpu takes float32 or float64, got ", z_in.scalar_type());
  TORCH_CHECK(rank_in.dim() == 1 && rank_in.size(0) == z_in.size(0) && rank_in.scalar_type() == at::kLong,
              "rank must be (N,) int64");
  const int64_t N = z_in.size(0), K = codebook_in.size(0);
  TORCH_CHECK(K >= 1 && K < (int64_t(1) << 31), "K must be in [1, 2^31), got ", K);
  const at::Tensor z = z_in.contiguous(), codebook = codebook_in.contiguous(), rank = rank_in.contiguous();
  at::Tensor out = at::empty({N}, rank.options());
  if (N == 0) return out;
  const int64_t* rk = rank.data_ptr<int64_t>();
  for (int64_t n = 0; n < N; ++n)
    TORCH_CHECK_VALUE(rk[n] >= 0 && rk[n] < K, "rank[", n, "] = ", rk[n], " is outside [0, K=", K, ")");
  const at::Tensor cb_sq = codebook.square().sum(1);
  const at::Tensor cb_t = codebook.t();
  const int64_t chunk = std::max<int64_t>(1, kChunkElems / K);
  for (int64_t r0 = 0; r0 < N; r0 += chunk) {
    const int64_t rows = std::min(chunk, N - r0);
    const at::Tensor keys = at::addmm(cb_sq, z.narrow(0, r0, rows), cb_t, /*beta=*/1, /*alpha=*/-2).contiguous();
    AT_DISPATCH_FLOATING_TYPES(keys.scalar_type(), "code_at_rank_cpu", [&] {
      select_rows<scalar_t>(keys.data_ptr<scalar_t>(), rk + r0, rows, K, out.data_ptr<int64_t>() + r0);
    });
  }
  return out;
}

}  // namespace vqfast
