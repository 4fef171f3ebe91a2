# pixelfly developer entry points. Every target does the set-up it needs.
#   make run     - the main job: python -m pixelfly (builds first)
#   make test    - the whole suite: C core under AddressSanitizer, nvcc compile check, pytest
#   make bench   - CPU benchmarks (ratios against dense PyTorch, JSON + plots in bench-results/)
#   make bench-gpu - the CUDA benchmark (needs an NVIDIA GPU and a CUDA build of torch)
#   make gpu-check - the one GPU check for a machine with an NVIDIA GPU (<= 8 minutes, no
#                    venv, no downloads): build, tests/test_cuda.py on both paths, memcheck,
#                    benchmark; results in $OUT or bench-results/ (benchmarks/gpu_check.sh)
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.deps-stamp
CC      ?= gcc
NVCC    ?= nvcc
CORE_C  := $(wildcard csrc/core/*.c csrc/cpu/*.c)
C_TESTS := $(wildcard csrc/tests/test_*.c)
CU_SRC  := $(wildcard csrc/cuda/*.cu)

.PHONY: all venv build run test test-c test-py test-cuda-compile bench bench-gpu gpu-check clean

all: build

$(STAMP): requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(STAMP)

# Build in place (serialised with flock so parallel callers do not race on build/).
build: $(STAMP)
	flock .build.lock $(PY) setup.py -q build_clib build_ext --inplace

run: build
	$(PY) -m pixelfly

# C core unit tests, compiled with AddressSanitizer + UBSan (no Python involved).
test-c:
	mkdir -p csrc/tests/bin
	@set -e; for t in $(C_TESTS); do \
	  b=csrc/tests/bin/$$(basename $$t .c); \
	  $(CC) -std=c11 -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
	    -fno-sanitize-recover=all -Icsrc/include $$t $(CORE_C) -lm -o $$b; \
	  echo "== $$b (ASan+UBSan)"; ASAN_OPTIONS=detect_leaks=1 $$b; \
	done

# Every .cu file must compile for sm_80 and sm_90 (CI has nvcc but no GPU); then the
# torch binding csrc/torch/ops_cuda.cu against the installed torch's headers. A CPU torch
# wheel ships ATen/cuda and c10/cuda but not the generated c10/cuda/impl/cuda_cmake_macros.h;
# the check then defines C10_CUDA_NO_CMAKE_CONFIGURE_FILE (that header only holds the
# build-time C10_CUDA_BUILD_SHARED_LIBS switch) and says so.
CUDA_GENCODE := -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
test-cuda-compile: $(STAMP)
	@if command -v $(NVCC) >/dev/null 2>&1; then \
	  set -e; mkdir -p build/cuda-check; for f in $(CU_SRC); do \
	    echo "== nvcc $$f (sm_80, sm_90)"; \
	    $(NVCC) -std=c++17 -O2 -Icsrc/include $(CUDA_GENCODE) \
	      -c $$f -o build/cuda-check/$$(basename $$f).o; \
	  done; \
	  if ! $(PY) -c 'import torch' >/dev/null 2>&1; then \
	    echo "no torch in $(PY): csrc/torch/ops_cuda.cu NOT compiled (run make venv)"; [ -z "$$CI" ]; exit $$?; fi; \
	  TINC=$$($(PY) -c 'from torch.utils.cpp_extension import include_paths; print(" ".join("-I" + p for p in include_paths()))'); \
	  TROOT=$$($(PY) -c 'from torch.utils.cpp_extension import include_paths; print(include_paths()[0])'); \
	  PYINC=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])'); \
	  EXTRA=""; MISSING=""; \
	  for h in c10/cuda/CUDAGuard.h c10/cuda/CUDAStream.h ATen/Context.h torch/library.h; do \
	    [ -f "$$TROOT/$$h" ] || MISSING="$$MISSING $$h"; done; \
	  if [ -n "$$MISSING" ]; then \
	    echo "torch headers missing:$$MISSING -- csrc/torch/ops_cuda.cu NOT compiled"; [ -z "$$CI" ]; exit $$?; fi; \
	  if [ ! -f "$$TROOT/c10/cuda/impl/cuda_cmake_macros.h" ]; then \
	    echo "note: this torch (CPU wheel) lacks c10/cuda/impl/cuda_cmake_macros.h; compiling ops_cuda.cu with -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE"; \
	    EXTRA="-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE"; fi; \
	  echo "== nvcc csrc/torch/ops_cuda.cu against $$TROOT (sm_80, sm_90)"; \
	  $(NVCC) -std=c++20 -O2 --expt-relaxed-constexpr $$EXTRA -Icsrc/include $$TINC -I$$PYINC $(CUDA_GENCODE) \
	    -Xcompiler -fPIC -c csrc/torch/ops_cuda.cu -o build/cuda-check/ops_cuda.cu.o; \
	else echo "nvcc not found: CUDA compile check NOT run"; [ -z "$$CI" ]; fi

test-py: build
	$(PY) -m pytest -q tests

test: test-c test-cuda-compile test-py

bench: build
	$(PY) -m benchmarks.bench_linear --json bench-results/linear.json --plot bench-results/linear.png
	$(PY) -m benchmarks.bench_attention --json bench-results/attention.json --plot bench-results/attention.png

bench-gpu: build
	$(PY) -m benchmarks.bench_cuda --json bench-results/cuda.json

# Uses the machine's own python3 and torch (PYTHON=... to choose): no venv, no downloads.
gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf build csrc/tests/bin pixelfly/*.so *.egg-info
