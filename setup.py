"""Build pixelfly's C core and its two bindings.

* ``pixelfly_core``: static library of the torch-free C11 core (``csrc/core``, ``csrc/cpu``).
* ``pixelfly._C``: CPython + NumPy C-API module for layouts, masks and the budget.
* ``pixelfly._ops``: PyTorch C++ extension registering the block-sparse ops (CPU).
* ``pixelfly._ops_cuda``: the CUDA kernels, built only when torch has CUDA *and* nvcc is
  found (set ``PIXELFLY_CUDA=0`` to skip, ``=1`` to require). The build says which.

Build against an installed torch without build isolation::

    pip install --no-build-isolation .
"""
import glob
import os
import sys

import numpy as np
from setuptools import Extension, setup
from setuptools.command.build_clib import build_clib

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - message for a user without torch
    sys.exit("pixelfly: torch must be installed before building (pip install torch==2.13.0), "
             "then build with --no-build-isolation")

ROOT = os.path.dirname(os.path.abspath(__file__))
INCLUDE = os.path.join(ROOT, "csrc", "include")
CORE_SOURCES = sorted(glob.glob("csrc/core/*.c") + glob.glob("csrc/cpu/*.c"))
ALL_SOURCES = sorted(glob.glob("csrc/**/*.*", recursive=True))
C_FLAGS = ["-O3", "-std=c11", "-fPIC", "-Wall", "-Wextra", "-fno-math-errno"]
# -fopenmp: at::parallel_for is inline OpenMP in torch's headers; without it the ops would
# silently run on one thread.
CXX_FLAGS = ["-O3", "-std=c++20", "-fPIC", "-fopenmp"]


class BuildCoreLib(build_clib):
    """build_clib that honours per-library cflags and include_dirs."""

    def build_libraries(self, libraries):
        for name, info in libraries:
            objects = self.compiler.compile(
                info["sources"], output_dir=self.build_temp,
                include_dirs=info.get("include_dirs"), extra_postargs=info.get("cflags"),
                depends=ALL_SOURCES, debug=self.debug)
            self.compiler.create_static_lib(objects, name, output_dir=self.build_clib,
                                            debug=self.debug)


def cuda_wanted():
    flag = os.environ.get("PIXELFLY_CUDA", "auto")
    has_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if flag == "0":
        print("pixelfly: PIXELFLY_CUDA=0, skipping the CUDA kernels")
        return False
    if not has_cuda:
        why = "torch has no CUDA" if torch.version.cuda is None else "nvcc (CUDA_HOME) not found"
        if flag == "1":
            sys.exit(f"pixelfly: PIXELFLY_CUDA=1 but {why}")
        print(f"pixelfly: {why}; building the CPU kernels only (CUDA tensors run the composite ops)")
        return False
    print(f"pixelfly: building CUDA kernels with {cpp_extension.CUDA_HOME}")
    return True


def extensions():
    exts = [
        # torch-free: a plain C extension that links only the core and NumPy.
        Extension(
            "pixelfly._C", sorted(glob.glob("csrc/python/*.c")),
            include_dirs=[INCLUDE, np.get_include()], depends=ALL_SOURCES,
            extra_compile_args=["-O2", "-std=c11", "-DNPY_NO_DEPRECATED_API=NPY_1_20_API_VERSION"]),
        cpp_extension.CppExtension(
            "pixelfly._ops", sorted(glob.glob("csrc/torch/*.cpp")),
            include_dirs=[INCLUDE], depends=ALL_SOURCES,
            extra_compile_args={"cxx": CXX_FLAGS}, extra_link_args=["-fopenmp"]),
    ]
    if cuda_wanted():
        # Torch-free kernels (csrc/cuda) + the one binding file (csrc/torch/ops_cuda.cu).
        # No -std here: torch's CUDAExtension picks the standard its headers need.
        exts.append(cpp_extension.CUDAExtension(
            "pixelfly._ops_cuda",
            sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/torch/*.cu")),
            include_dirs=[INCLUDE], depends=ALL_SOURCES,
            extra_compile_args={"cxx": CXX_FLAGS,
                                "nvcc": ["-O3"] + cuda_arch_flags()}))
    return exts


def cuda_arch_flags():
    """-gencode flags: TORCH_CUDA_ARCH_LIST if set, else the visible GPUs, else sm_80;sm_90.

    The kernels use cp.async, ldmatrix and bf16 mma.sync, so architectures below 8.0 are
    dropped (with a message)."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env and env != "native":
        src = "TORCH_CUDA_ARCH_LIST"
        named = {"Ampere": "8.0;8.6+PTX", "Ada": "8.9+PTX", "Hopper": "9.0+PTX",
                 "Blackwell": "10.0;12.0+PTX"}
        for k, v in named.items():
            env = env.replace(k, v)
        archs = [a for a in env.replace(" ", ";").split(";") if a]
    elif torch.cuda.is_available() and torch.cuda.device_count() > 0:
        src = "visible GPUs"
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        archs = [f"{ma}.{mi}" for ma, mi in caps]
        archs[-1] += "+PTX"
    else:
        src = "default (no TORCH_CUDA_ARCH_LIST, no visible GPU)"
        archs = ["8.0", "9.0+PTX"]
    flags = []
    for a in archs:
        ptx = a.endswith("+PTX")
        ver = a[:-4] if ptx else a
        try:
            major, minor = ver.split(".")
            num = f"{int(major)}{minor}"
        except ValueError:
            sys.exit(f"pixelfly: cannot parse CUDA arch {a!r} from {src}")
        if int(major) < 8:
            print(f"pixelfly: skipping CUDA arch {a} (the kernels need sm_80 or newer)")
            continue
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    if not flags:
        sys.exit(f"pixelfly: no CUDA arch >= 8.0 in {src} ({';'.join(archs)})")
    print(f"pixelfly: CUDA archs from {src}: {' '.join(flags)}")
    return flags


def runtime_requirements():
    """The extension links against this torch's C++ ABI, so the installed package asks for
    exactly the torch release it was built with (local labels such as ``+cu130`` match)."""
    release = torch.__version__.split("+")[0]
    return ["numpy>=1.24", f"torch=={release}"]  # matplotlib, tqdm: the "experiments" extra


setup(
    install_requires=runtime_requirements(),
    libraries=[("pixelfly_core", {"sources": CORE_SOURCES, "include_dirs": [INCLUDE],
                                  "cflags": C_FLAGS})],
    ext_modules=extensions(),
    cmdclass={"build_clib": BuildCoreLib,
              # no ninja: torch's ninja path compiles every source as C++; the C module must stay C.
              "build_ext": cpp_extension.BuildExtension.with_options(use_ninja=False)},
)
