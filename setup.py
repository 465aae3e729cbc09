"""Build vqfast._C against the torch that is already installed.

Environment switches (resolved once, printed below):
  VQFAST_NO_EXT=1   build no extension at all; vqfast then runs its reference paths.
  FORCE_CUDA=1      compile the CUDA sources even when torch.cuda reports no device
                    (torch must still be a CUDA build and nvcc must be found).
  TORCH_CUDA_ARCH_LIST, MAX_JOBS are honoured by torch.utils.cpp_extension itself.
"""

import glob
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    # Paths relative to setup.py: setuptools rejects absolute source paths.
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _flag(name):
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _ext_modules():
    if _flag("VQFAST_NO_EXT"):
        print("vqfast build: VQFAST_NO_EXT=1 -> no extension; reference paths only")
        return [], {}

    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    nvcc = shutil.which("nvcc") or (CUDA_HOME and os.path.join(CUDA_HOME, "bin", "nvcc"))
    torch_has_cuda = torch.version.cuda is not None
    with_cuda = torch_has_cuda and bool(nvcc) and (torch.cuda.is_available() or _flag("FORCE_CUDA"))

    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    # -fopenmp: at::parallel_for is an inline `omp parallel`; the extension binds to the
    # libgomp that torch already loaded, so torch.set_num_threads governs our kernels.
    cxx = ["-O3", "-fopenmp"]
    macros = []
    kwargs = dict(extra_link_args=["-fopenmp"])
    if with_cuda:
        # csrc/cuda/*.cu are raw-pointer kernels; csrc/cuda/*.cpp are their ATen bindings.
        sources += _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")
        macros.append(("WITH_CUDA", None))
        kwargs["extra_compile_args"] = {"cxx": cxx, "nvcc": ["-O3"]}
        ext = CUDAExtension("vqfast._C", sources, define_macros=macros, **kwargs)
    else:
        kwargs["extra_compile_args"] = {"cxx": cxx}
        ext = CppExtension("vqfast._C", sources, define_macros=macros, **kwargs)

    print(
        "vqfast build: torch %s (CUDA %s), nvcc %s, FORCE_CUDA=%s -> CUDA kernels %s; %d sources"
        % (
            torch.__version__,
            torch.version.cuda,
            nvcc or "not found",
            os.environ.get("FORCE_CUDA", "0"),
            "ON" if with_cuda else "OFF",
            len(sources),
        )
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _ext_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
