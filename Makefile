# Weir: `make run` starts it, `make test` tests it. Everything else is a step of those two.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   := .venv
PY     := $(VENV)/bin/python
WASM   := target/weir.wasm
RAW_WASM := target/wasm32-wasip1/release/weir.wasm
TARGET := wasm32-wasip1
# binaryen's wasm-opt, from the npm registry (pinned): shrinks the module by ~20%.
BINARYEN_VERSION := 132.0.0
WASM_OPT := target/tools/binaryen-$(BINARYEN_VERSION)/node_modules/.bin/wasm-opt

.PHONY: help run test unit policy-test integration soak bench bench-split bench-scaling bench-floor floor-filter profile lint fmt wasm bins venv wasm-target clean

help:
	@echo "make run    build Weir and start Envoy with it in front of the mock (or real) providers"
	@echo "make test   run every test: lint, host unit tests, integration tests against a real Envoy"
	@echo "make wasm   build $(WASM) (WEIR_OPT=speed: faster, larger)"
	@echo "make lint   cargo fmt --check and clippy (host and wasm)"
	@echo "make bench  plain Envoy vs Envoy + Weir, side by side (BENCH_ROUNDS rounds of BENCH_SECONDS per run, default 3 and 3)"
	@echo "make bench-split  the buffered path only, and where each proxy's CPU goes (Weir's Wasm, Envoy, kernel; needs perf)"
	@echo "make bench-scaling  cost as keys, policy rules, body size and stream length grow; memory per worker"
	@echo "make bench-floor  what any proxy-wasm filter of Weir's shape costs, beside plain Envoy and Weir"
	@echo "make profile  the filter's hot functions: the module under wasmtime with a stub host, with perf"
	@echo "make soak   mixed traffic for SOAK_SECONDS (240): no unexpected errors, flat memory, one record per request"

# -- the two commands -------------------------------------------------------------------------
run: wasm bins venv
	@$(PY) tools/devstack.py run

test: lint unit policy-test integration

# -- steps ------------------------------------------------------------------------------------
# Panic locations in the module name their source files, and every dependency's path starts
# with cargo's registry directory (~60 bytes, ~100 files). Remapped to a short prefix: the
# module is ~5 KB smaller and the same whatever CARGO_HOME is. (Added to .cargo/config.toml's
# flags, not replacing them; exported, so every cargo run of a recipe builds alike.)
REGISTRY_SRC := $(or $(CARGO_HOME),$(HOME)/.cargo)/registry/src
export CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS := --remap-path-prefix=$(REGISTRY_SRC)=/cargo \
  --remap-path-prefix=$(REGISTRY_SRC)/index.crates.io-1949cf8c6b5b557f=/cargo

wasm-target:
	@rustup target list --installed | grep -qx $(TARGET) || rustup target add $(TARGET)

# WEIR_OPT=speed compiles every crate at opt-level 3: about 20% less filter CPU per request
# than the default, for a 1.79 MB module instead of 1.47 MB (see README, Benchmark).
WEIR_OPT ?= size
ifeq ($(WEIR_OPT),speed)
CARGO_OPT := CARGO_PROFILE_RELEASE_OPT_LEVEL=3
else ifneq ($(WEIR_OPT),size)
$(error WEIR_OPT must be size or speed)
endif

wasm: wasm-target
	$(CARGO_OPT) cargo build --target $(TARGET) --release --lib
	@$(MAKE) --no-print-directory $(WASM)

# The module Envoy loads: cargo's output through `wasm-opt -Oz` (the features are the ones
# rustc's wasm32-wasip1 target emits, plus SIMD from .cargo/config.toml). Without npm, the
# unoptimised module is used.
$(WASM): $(RAW_WASM)
	@if [ ! -x $(WASM_OPT) ] && command -v npm >/dev/null; then \
	  npm install --silent --no-audit --no-fund --prefix $(dir $(WASM_OPT))../.. binaryen@$(BINARYEN_VERSION) \
	    || echo "warning: could not install binaryen from npm" >&2; fi
	@if [ -x $(WASM_OPT) ]; then \
	  $(WASM_OPT) -Oz --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
	    --enable-mutable-globals --enable-simd $(RAW_WASM) -o $@.tmp && mv $@.tmp $@; \
	else echo "warning: no wasm-opt (npm missing or failed); $(WASM) is not optimised" >&2; cp $(RAW_WASM) $@; fi
	@ls -l $@ | awk '{printf "%s: %.2f MB\n", $$NF, $$5 / 1e6}'

bins:
	cargo build --bins

$(VENV)/.installed: tools/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tools/requirements.txt
	touch $@

venv: $(VENV)/.installed

unit:
	cargo test --all-targets

policy-test: bins
	target/debug/weir policy test -c envoy/weir.toml

integration: wasm bins venv floor-filter
	$(PY) -m pytest -q tests

bench: wasm bins venv
	cargo build --profile bench-tools --bin weir-load --bin weir-mock
	$(PY) tools/bench.py

bench-split: wasm bins venv
	cargo build --profile bench-tools --bin weir-load --bin weir-mock
	$(PY) tools/bench.py --only buffered --split

bench-scaling: wasm bins venv
	cargo build --profile bench-tools --bin weir-load --bin weir-mock
	$(PY) tools/scaling.py

# Filters of Weir's shape without its logic (tools/floor-filter), for `make bench-floor`.
FLOOR_WASM := target/weir-floor.wasm
floor-filter: wasm-target
	CARGO_TARGET_DIR=target/floor cargo build --release --target $(TARGET) --manifest-path tools/floor-filter/Cargo.toml
	cp target/floor/$(TARGET)/release/weir_floor_filter.wasm $(FLOOR_WASM)

bench-floor: wasm bins venv floor-filter
	cargo build --profile bench-tools --bin weir-load --bin weir-mock
	$(PY) tools/floor.py

# The module with its function names (the default build's settings, not stripped), run by
# tools/profile (wasmtime; its first build takes a few minutes).
profile: wasm bins venv
	CARGO_TARGET_DIR=target/profile CARGO_PROFILE_RELEASE_STRIP=false cargo build --target $(TARGET) --release --lib
	$(WASM_OPT) -g -Oz --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
	  --enable-mutable-globals --enable-simd target/profile/$(TARGET)/release/weir.wasm -o target/profile/weir-named.wasm
	CARGO_TARGET_DIR=target/profile/host cargo build --release --manifest-path tools/profile/Cargo.toml
	$(PY) tools/profile.py

SOAK_SECONDS ?= 240
soak: wasm bins venv
	$(PY) tools/soak.py --seconds $(SOAK_SECONDS)

lint: wasm-target
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --target $(TARGET) --lib -- -D warnings
	cargo fmt --check --manifest-path tools/floor-filter/Cargo.toml
	CARGO_TARGET_DIR=target/floor cargo clippy --target $(TARGET) --manifest-path tools/floor-filter/Cargo.toml -- -D warnings

fmt:
	cargo fmt

clean:
	cargo clean
	rm -rf $(VENV) .run
