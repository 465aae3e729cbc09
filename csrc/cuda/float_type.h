// Host-side description of a tensor's float type for the raw CUDA launchers.
#pragma once

namespace vqfast {
namespace cuda {

enum class FloatType { kFloat32, kFloat64, kFloat16, kBFloat16 };

}  // namespace cuda
}  // namespace vqfast
