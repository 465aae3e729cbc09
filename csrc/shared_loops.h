// The small loops the CPU and CUDA kernels share, written once as host/device inlines:
// the top-k insertions of nearest_code and the triangular solves of OMP's Cholesky update.
#pragma once
#include <cstdint>

#include "host_device.h"

namespace vqfast {

// Inserts (d, c) at the end of the sorted prefix [0, n) of (dv, di), ordered by
// (distance, index): an insertion sort's step, for k small and nearly sorted entries.
template <typename V, typename I, typename N>
VQ_HD void ordered_insert(V* dv, I* di, N n, V d, I c) {
  N pos = n;
  while (pos > 0 && (dv[pos - 1] > d || (dv[pos - 1] == d && di[pos - 1] > c))) {
    dv[pos] = dv[pos - 1];
    di[pos] = di[pos - 1];
    --pos;
  }
  dv[pos] = d;
  di[pos] = c;
}

// Inserts (d, c) into an ascending top-k list (tv, ti) of k entries whose last one d
// beats: that last entry gives way. Equal distances keep the lower index first.
template <typename V, typename I, typename N>
VQ_HD void topk_insert(V* tv, I* ti, N k, V d, I c) {
  ordered_insert(tv, ti, k - 1, d, c);
}

// L w = b for the lower-triangular k x k L (row-major, row stride s); b(r) gives the
// right-hand side. Returns |w|^2 (OMP: the new Cholesky row's off-diagonal energy).
template <typename T, typename N, typename B>
VQ_HD T forward_solve(const T* L, int64_t s, N k, B b, T* w) {
  T wn = 0;
  for (N r = 0; r < k; ++r) {
    T v = b(r);
    for (N c = 0; c < r; ++c) v -= L[r * s + c] * w[c];
    w[r] = v / L[r * s + r];
    wn += w[r] * w[r];
  }
  return wn;
}

// L^T x = w for the same L: with forward_solve, x = (L L^T)^-1 b.
template <typename T, typename N>
VQ_HD void backward_solve(const T* L, int64_t s, N k, const T* w, T* x) {
  for (N r = k - 1; r >= 0; --r) {
    T v = w[r];
    for (N c = r + 1; c < k; ++c) v -= L[c * s + r] * x[c];
    x[r] = v / L[r * s + r];
  }
}

}  // namespace vqfast
