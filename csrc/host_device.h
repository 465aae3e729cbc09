// VQ_HD: a function compiled for the host and, under nvcc, for the device too, so the
// CPU (.cpp) and CUDA (.cu) kernels share one definition.
#pragma once

#if defined(__CUDACC__)
#define VQ_HD __host__ __device__ __forceinline__
#else
#define VQ_HD inline
#endif
