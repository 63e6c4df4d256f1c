# persona-bus: every step a newcomer needs, from a fresh machine.
#   make run    build everything and start the host on the embedded SQLite bus
#   make test   all tests (unit + integration, real SQLite and real handlers)
#   make lint   rustfmt check + clippy -D warnings
#   make bench  the benchmarks behind BENCHMARKS.md

CARGO       ?= cargo
TARGET_DIR  := $(or $(CARGO_TARGET_DIR),target)
WASM_TARGET := wasm32-wasip2
# Guests build in their own target folder so a guest build never waits on
# the host build's lock (tests/build.rs uses the same folder).
WASM_OUT    := $(TARGET_DIR)/wasm/$(WASM_TARGET)/release
HANDLERS    := audit router counter
HANDLERS_DIR := build/handlers
BIN         := $(TARGET_DIR)/release/persona-bus
DATA_DIR    ?= .data

.PHONY: all toolchain build handlers run test lint fmt bench clean

all: build

# The wasm target and the lint components; quick no-ops when present.
toolchain:
	@command -v rustup >/dev/null || { echo "rustup is required (https://rustup.rs)"; exit 1; }
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

# Compiles the first-party handlers and leaves each ready-to-load pair
# (name.wasm + name.toml) in build/handlers. Files are copied then renamed,
# so a running host never sees half a component.
handlers: toolchain
	CARGO_TARGET_DIR=$(TARGET_DIR)/wasm $(CARGO) build --release --target $(WASM_TARGET) $(addprefix -p ,$(HANDLERS))
	@mkdir -p $(HANDLERS_DIR)
	@for h in $(HANDLERS); do \
		cp handlers/$$h/$$h.toml $(HANDLERS_DIR)/.$$h.toml.tmp && mv $(HANDLERS_DIR)/.$$h.toml.tmp $(HANDLERS_DIR)/$$h.toml; \
		cp $(WASM_OUT)/$$h.wasm $(HANDLERS_DIR)/.$$h.wasm.tmp && mv $(HANDLERS_DIR)/.$$h.wasm.tmp $(HANDLERS_DIR)/$$h.wasm; \
	done
	@echo "handlers ready in $(HANDLERS_DIR): $(HANDLERS)"

build: toolchain handlers
	$(CARGO) build --release -p persona-bus

# The host on its embedded default (SQLite, Kafka off) with the first-party
# handlers and a little demo traffic. Ctrl-C stops it gracefully.
run: build
	$(BIN) --data-dir $(DATA_DIR) run --handlers $(HANDLERS_DIR) --demo

# Release profile: one build of wasmtime serves run, test and bench, and
# handler compilation is not slowed by a debug cranelift.
test: toolchain
	$(CARGO) test --release

lint: toolchain
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench: toolchain
	$(CARGO) bench -p persona-bus-tests --bench embedded

clean:
	rm -rf build $(DATA_DIR)
	$(CARGO) clean
