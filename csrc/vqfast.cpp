// The pybind11 module vqfast._C: raw functions only. vqfast/ops/*.py wraps each one
// as a torch.library custom op with argument checks and backend dispatch.
#include <torch/extension.h>

#include "ops.h"
#ifdef WITH_CUDA
#include "cuda/nearest_code.h"
#include "cuda/omp.h"
#include "cuda/decode_attention.h"
#include "cuda/restore_step.h"
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vqfast native kernels (CPU C++; CUDA when built with it)";
  m.def("nearest_code_cpu", &vqfast::nearest_code_cpu, "fused nearest-codebook search (CPU)", py::arg("z"),
        py::arg("codebook"), py::arg("k"), py::arg("isa") = "auto");
  m.def("omp_cpu", &vqfast::omp_cpu, "batched orthogonal matching pursuit in Gram space (CPU)", py::arg("gram"),
        py::arg("xty"), py::arg("n_nonzero"), py::arg("tol"), py::arg("y_norm_sq"));
  m.def("restore_step_cpu", &vqfast::restore_step_cpu, "fused NLL test and counter-based inverse-CDF sample (CPU)",
        py::arg("logits"), py::arg("current"), py::arg("threshold"), py::arg("seeds"), py::arg("position"),
        py::arg("temperature"));
  m.def("decode_attention_cpu", &vqfast::decode_attention_cpu, "single-query attention over a KV cache (CPU)",
        py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("length"), py::arg("scale"));
  m.def("code_at_rank_cpu", &vqfast::code_at_rank_cpu, "the code at a given rank of each row's distance order (CPU)",
        py::arg("z"), py::arg("codebook"), py::arg("rank"));
  m.def("cpu_isas", &vqfast::cpu_isas, "CPU instruction-set variants available here, best first");
  m.def("nearest_code_cpu_isa", &vqfast::nearest_code_cpu_isa, "the variant nearest_code_cpu's 'auto' runs for D and k",
        py::arg("D"), py::arg("k") = 1);
#ifdef WITH_CUDA
  m.def("nearest_code_cuda", &vqfast::nearest_code_cuda, "fused nearest-codebook search (CUDA)", py::arg("z"),
        py::arg("codebook"), py::arg("k"));
  m.def("omp_cuda", &vqfast::omp_cuda, "batched orthogonal matching pursuit in Gram space (CUDA)", py::arg("gram"),
        py::arg("xty"), py::arg("n_nonzero"), py::arg("tol"), py::arg("y_norm_sq"));
  m.def("restore_step_cuda", &vqfast::restore_step_cuda, "fused NLL test and counter-based inverse-CDF sample (CUDA)",
        py::arg("logits"), py::arg("current"), py::arg("threshold"), py::arg("seeds"), py::arg("position"),
        py::arg("temperature"));
  m.def("decode_attention_cuda", &vqfast::decode_attention_cuda, "single-query attention over a KV cache (CUDA)",
        py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("length"), py::arg("scale"));
  m.def("decode_attention_cuda_max_length", &vqfast::decode_attention_cuda_max_length,
        "longest cache length the CUDA decode_attention kernel takes for q's dtype and head size", py::arg("q"));
  m.attr("with_cuda") = true;
  m.attr("nearest_code_cuda_max_k") = vqfast::cuda::kNearestCodeMaxK;
  m.attr("omp_cuda_max_nonzero") = vqfast::cuda::kOmpMaxNonzero;
  m.attr("decode_attention_cuda_max_d") = vqfast::cuda::kDecodeAttentionMaxD;
#else
  m.attr("with_cuda") = false;
#endif
}
