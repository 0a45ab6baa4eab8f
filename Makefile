# Two commands for a newcomer (see README.md):
#   make run    fetch SmolLM2, build, start the llama.cpp worker on loopback, stream a chat reply
#   make test   every test (needs both models; fetched on first run)
SHELL := /bin/bash
CARGO ?= cargo
MODELS_DIR ?= $(CURDIR)/models
export MODELS_DIR
PROMPT ?= What is the capital of France? Answer in one sentence.

.PHONY: run test deps models models-all build lint unit-test

## Install the system packages the build needs (cmake and libclang for llama.cpp).
deps:
	@missing=""; \
	command -v cmake >/dev/null || missing="$$missing cmake"; \
	ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 || missing="$$missing libclang-dev"; \
	command -v c++ >/dev/null || missing="$$missing g++"; \
	command -v python3 >/dev/null || missing="$$missing python3 python3-pip"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "Rust is missing: install it from https://rustup.rs (1.88 or newer)"; exit 1; }

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

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit-test: deps models-all
	$(CARGO) test --workspace

test: deps models-all lint unit-test
