// The counter-based uniform shared by every backend (see vqfast/reference/restore_step.py):
// three rounds of Wellons' lowbias32 over the seed's halves and the position; the top
// 24 bits scaled to [0, 1). Host and device code, no dependencies.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace vqfast {

VQ_HD uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

VQ_HD double counter_uniform(int64_t seed, int64_t position) {
  const uint64_t s = static_cast<uint64_t>(seed);
  uint32_t h = lowbias32(static_cast<uint32_t>(s) ^ 0x9E3779B9u);
  h = lowbias32(h ^ static_cast<uint32_t>(s >> 32));
  h = lowbias32(h ^ static_cast<uint32_t>(static_cast<uint64_t>(position)));
  return static_cast<double>(h >> 8) * (1.0 / 16777216.0);
}

}  // namespace vqfast
