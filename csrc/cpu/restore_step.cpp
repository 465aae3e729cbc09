// One restoration step on the CPU: per row, the NLL of the current token under
// log-softmax(logits) and, where it exceeds the threshold, an inverse-CDF sample of
// softmax(logits / T) driven by the counter-based uniform. Rows run in parallel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <tuple>

#include "../checks.h"
#include "../counter_rng.h"

namespace vqfast {
namespace {

template <typename T>
void restore_rows(const T* logits, const int64_t* current, const int64_t* seeds, int64_t V, double threshold,
                  int64_t position, double temperature, int64_t r0, int64_t r1, int64_t* tokens, T* nll,
                  std::atomic<bool>& out_of_range) {
  const T temp = static_cast<T>(temperature);  // divided, not multiplied by 1/T: the reference's rounding
  for (int64_t r = r0; r < r1; ++r) {
    const T* x = logits + r * V;
    T top = x[0];
    for (int64_t v = 1; v < V; ++v) top = x[v] > top ? x[v] : top;
    T z = 0;
    for (int64_t v = 0; v < V; ++v) z += std::exp(x[v] - top);
    const int64_t cur = current[r];
    if (cur < 0 || cur >= V) {  // no read: flagged, raised after the call
      out_of_range.store(true, std::memory_order_relaxed);
      nll[r] = std::numeric_limits<T>::quiet_NaN();
      tokens[r] = cur;
      continue;
    }
    const T n = top + std::log(z) - x[cur];
    nll[r] = n;
    int64_t tok = cur;
    if (n > static_cast<T>(threshold)) {
      // Sequential double accumulation rounded to T per prefix: what torch.cumsum does on
      // the CPU, so the reference's prefix sums (and its total, their last) are reproduced.
      double total = 0;
      for (int64_t v = 0; v < V; ++v) total += static_cast<double>(std::exp((x[v] - top) / temp));
      const T target = static_cast<T>(counter_uniform(seeds[r], position)) * static_cast<T>(total);
      double c = 0;
      tok = V - 1;
      for (int64_t v = 0; v < V; ++v) {
        c += static_cast<double>(std::exp((x[v] - top) / temp));
        if (static_cast<T>(c) > target) {
          tok = v;
          break;
        }
      }
    }
    tokens[r] = tok;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> restore_step_cpu(const at::Tensor& logits_in, const at::Tensor& current_in,
                                                    double threshold, const at::Tensor& seeds_in, int64_t position,
                                                    double temperature) {
  check_restore_step_args(logits_in, current_in, seeds_in, temperature);
  check_cpu("restore_step_cpu", {&logits_in, &current_in, &seeds_in});
  const at::Tensor logits = logits_in.contiguous(), current = current_in.contiguous(), seeds = seeds_in.contiguous();
  const int64_t M = logits.size(0), V = logits.size(1);
  at::Tensor tokens = at::empty({M}, current.options());
  at::Tensor nll = at::empty({M}, logits.options());
  std::atomic<bool> out_of_range{false};
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "restore_step_cpu", [&] {
    at::parallel_for(0, M, 16, [&](int64_t r0, int64_t r1) {
      restore_rows<scalar_t>(logits.data_ptr<scalar_t>(), current.data_ptr<int64_t>(), seeds.data_ptr<int64_t>(), V,
                             threshold, position, temperature, r0, r1, tokens.data_ptr<int64_t>(),
                             nll.data_ptr<scalar_t>(), out_of_range);
    });
  });
  TORCH_CHECK_VALUE(!out_of_range.load(), "current holds tokens outside [0, V=", V, ")");
  return {tokens, nll};
}

}  // namespace vqfast
