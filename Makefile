# persona-bus: every step a newcomer needs, from a fresh machine.
#   make run    build everything and start the host on the embedded SQLite bus
#   make test   all tests (unit + integration, real SQLite and real handlers)
#   make test-fast  the tests that need only Rust, SQLite and the Rust guests
#   make lint   rustfmt check + clippy -D warnings
#   make fuzz   every parser of outside input fuzzed for FUZZ_SECS (600) each
#   make bench  the benchmarks behind BENCHMARKS.md (bench-kafka: the Kafka ones)
#   make kafka-up / kafka-down   a real single-node Apache Kafka on 127.0.0.1:9092
#   make kafka-reset             the same broker again with an empty data folder (before benchmarks)
#   make kafka-up-secure         a second one with TLS + SASL (9096) and mutual TLS (9097)
#   make kafka-up-cluster        a three-broker cluster (9192-9194)
#   make registry-up / registry-down   a real schema registry (Apicurio) on 127.0.0.1:8081
#   make oci-up / oci-down       a real OCI registry (CNCF Distribution) on 127.0.0.1:5050
#   make screenshot              docs/dashboard.png, the dashboard under load in headless Chromium

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

# JavaScript handlers: one npm toolchain (tools/js, locked), many sources.
JS_TOOLS    := tools/js
COMPONENTIZE := $(JS_TOOLS)/node_modules/.bin/componentize-js
JS_OUT      := $(TARGET_DIR)/js
JS_WASM     := $(JS_OUT)/tally-js.wasm $(JS_OUT)/handler-template-js.wasm $(JS_OUT)/fetch-js.wasm

.PHONY: all toolchain build handlers js-handlers py-handlers run test test-fast lint fmt fuzz bench bench-state bench-kafka bench-schemas bench-peer bench-http bench-tracing soak soak-retention screenshot otelcol browser-deps prometheus-deps clean kafka-up kafka-up-secure kafka-up-cluster kafka-down kafka-reset registry-up registry-down oci-up oci-down oci-tools

all: build

# The wasm target and the lint components; quick no-ops when present.
toolchain:
	@command -v rustup >/dev/null || { echo "rustup is required (https://rustup.rs)"; exit 1; }
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
	@# rdkafka's `ssl` feature links the system OpenSSL (Debian's security
	@# updates then reach the host without a rebuild of ours).
	@{ command -v pkg-config >/dev/null && pkg-config --exists openssl; } || { \
		echo "installing OpenSSL headers and pkg-config for rdkafka's TLS (once)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends libssl-dev pkg-config; }

$(COMPONENTIZE): $(JS_TOOLS)/package.json $(JS_TOOLS)/package-lock.json
	@command -v npm >/dev/null || { echo "npm (Node.js 20) is required to build the JavaScript handlers"; exit 1; }
	cd $(JS_TOOLS) && npm ci --no-audit --no-fund
	@touch $@

# -d fetch-event: a handler exports `handle`, not wasi:http's incoming
# handler. Its outgoing HTTP (`http`) is kept: the host links wasi:http, deny
# by default (README "Outbound HTTP and secrets").
# The handlers export `handle-batch` too (world `batch-handler`); the test
# guest only `handle`.
JS_FLAGS := --wit wit/bus.wit -d fetch-event
$(JS_OUT)/tally-js.wasm: handlers/tally-js/tally-js.js wit/bus.wit $(COMPONENTIZE) Makefile
	@mkdir -p $(JS_OUT)
	$(COMPONENTIZE) $< $(JS_FLAGS) --world-name batch-handler -o $@

$(JS_OUT)/handler-template-js.wasm: examples/handler-template-js/handler.js wit/bus.wit $(COMPONENTIZE) Makefile
	@mkdir -p $(JS_OUT)
	$(COMPONENTIZE) $< $(JS_FLAGS) --world-name batch-handler -o $@

# A test guest: fetch() through the host's wasi:http.
$(JS_OUT)/fetch-js.wasm: tests/guests-js/fetch.js wit/bus.wit $(COMPONENTIZE) Makefile
	@mkdir -p $(JS_OUT)
	$(COMPONENTIZE) $< $(JS_FLAGS) --world-name handler -o $@

js-handlers: $(JS_WASM)

# Python handlers: componentize-py from PyPI in a venv outside the clone.
PY_VENV     := $(HOME)/.cache/persona-bus/py-venv-componentize-0.25.1
COMPONENTIZE_PY := $(PY_VENV)/bin/componentize-py
PY_OUT      := $(TARGET_DIR)/py

$(COMPONENTIZE_PY):
	@command -v python3 >/dev/null || { echo "Python 3 is required to build the Python handlers"; exit 1; }
	python3 -m venv $(PY_VENV) || { \
		echo "installing Debian's python3-venv (once)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends python3-venv && \
		python3 -m venv $(PY_VENV); }
	$(PY_VENV)/bin/pip install -q componentize-py==0.25.1

$(PY_OUT)/handler-template-python.wasm: examples/handler-template-python/app.py wit/bus.wit $(COMPONENTIZE_PY)
	@mkdir -p $(PY_OUT)
	cd examples/handler-template-python && $(COMPONENTIZE_PY) -d ../../wit/bus.wit -w batch-handler componentize app -o $(abspath $@)

$(PY_OUT)/tally-py.wasm: handlers/tally-py/app.py wit/bus.wit $(COMPONENTIZE_PY)
	@mkdir -p $(PY_OUT)
	cd handlers/tally-py && $(COMPONENTIZE_PY) -d ../../wit/bus.wit -w batch-handler componentize app -o $(abspath $@)

py-handlers: $(PY_OUT)/handler-template-python.wasm $(PY_OUT)/tally-py.wasm

# Compiles the first-party handlers and leaves each ready-to-load pair
# (name.wasm + name.toml) in build/handlers. Files are copied then renamed,
# so a running host never sees half a component.
handlers: toolchain js-handlers
	CARGO_TARGET_DIR=$(TARGET_DIR)/wasm $(CARGO) build --release --target $(WASM_TARGET) $(addprefix -p ,$(HANDLERS))
	@mkdir -p $(HANDLERS_DIR)
	@for h in $(HANDLERS); do \
		cp handlers/$$h/$$h.toml $(HANDLERS_DIR)/.$$h.toml.tmp && mv $(HANDLERS_DIR)/.$$h.toml.tmp $(HANDLERS_DIR)/$$h.toml; \
		cp $(WASM_OUT)/$$h.wasm $(HANDLERS_DIR)/.$$h.wasm.tmp && mv $(HANDLERS_DIR)/.$$h.wasm.tmp $(HANDLERS_DIR)/$$h.wasm; \
	done
	@cp handlers/tally-js/tally-js.toml $(HANDLERS_DIR)/.tally-js.toml.tmp && mv $(HANDLERS_DIR)/.tally-js.toml.tmp $(HANDLERS_DIR)/tally-js.toml
	@cp $(JS_OUT)/tally-js.wasm $(HANDLERS_DIR)/.tally-js.wasm.tmp && mv $(HANDLERS_DIR)/.tally-js.wasm.tmp $(HANDLERS_DIR)/tally-js.wasm
	@echo "handlers ready in $(HANDLERS_DIR): $(HANDLERS) tally-js"

build: toolchain handlers
	$(CARGO) build --release -p persona-bus

# The host on its embedded default (SQLite, Kafka off) with the first-party
# handlers and a little demo traffic. Ctrl-C stops it gracefully.
run: build
	$(BIN) --data-dir $(DATA_DIR) run --handlers $(HANDLERS_DIR) --demo

# Release profile: one build of wasmtime serves run, test and bench, and
# handler compilation is not slowed by a debug cranelift.
# Kafka tests run against the real brokers (`make kafka-up`,
# `make kafka-up-secure` and `make kafka-up-cluster`, left running).
test: toolchain js-handlers py-handlers browser-deps prometheus-deps otelcol kafka-up kafka-up-secure kafka-up-cluster registry-up oci-up oci-tools
	$(CARGO) test --release -- --include-ignored

# The fast tier, which is also plain `cargo test`: the unit tests and the
# integration tests that need only Rust, SQLite and the compiled Rust guests.
# Tests that need a broker, the registry, the collector, a browser or the
# JavaScript and Python toolchains are `#[ignore = "needs services: ..."]`
# and run only in `make test`.
test-fast: toolchain
	$(CARGO) test --release

# The dashboard test drives Debian's headless Chromium with playwright-core
# (installed by npm ci in tools/js, with the JavaScript toolchain).
CHROMIUM ?= /usr/bin/chromium
browser-deps: $(COMPONENTIZE)
	@command -v node >/dev/null || { echo "Node.js 20 is required for the dashboard test"; exit 1; }
	@test -x $(CHROMIUM) || { \
		echo "installing Debian's chromium for the dashboard test (once)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium; }

# docs/dashboard.png (the README's picture): a host with the example
# handlers under a steady load, shot in headless Chromium.
screenshot: build browser-deps
	BIN=$(BIN) HANDLERS_DIR=$(HANDLERS_DIR) scripts/screenshot.sh docs/dashboard.png

# The trace tests export to a real OpenTelemetry Collector (OTLP receiver +
# file exporter), built once from the Go module proxy into ~/.cache.
otelcol:
	@scripts/otelcol.sh

# Tracing's cost on Kafka throughput (off, 1% and 100% sampled).
bench-tracing: toolchain kafka-up otelcol handlers
	env -u RUST_BACKTRACE $(CARGO) bench -p persona-bus-tests --bench kafka -- --tracing

# The monitoring tests run Debian's Prometheus and promtool.
prometheus-deps:
	@{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || { \
		echo "installing Debian's prometheus for the monitoring tests (once)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus; }

lint: toolchain
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench: toolchain kafka-up oci-up handlers
	$(CARGO) build --release -p persona-bus-tests --bin persona-bus-host
	$(CARGO) bench -p persona-bus-tests --bench embedded
	$(CARGO) bench -p persona-bus-tests --bench kafka
	$(CARGO) bench -p persona-bus-tests --bench state
	$(CARGO) bench -p persona-bus-tests --bench schemas
	$(CARGO) bench -p persona-bus-tests --bench ordering
	$(CARGO) bench -p persona-bus-tests --bench batches
	$(CARGO) bench -p persona-bus-tests --bench rollout
	$(CARGO) bench -p persona-bus-tests --bench oci
	$(MAKE) bench-http

# Serial state per project: one project's 100,000-event backlog through a
# read-modify-write handler, from SQLite and Kafka (HOSTS="a b" compares
# host binaries, alternating).
bench-state: toolchain kafka-up
	$(CARGO) build --release -p persona-bus-tests --bin persona-bus-host
	$(CARGO) bench -p persona-bus-tests --bench state -- $(foreach h,$(HOSTS),--host $(h))

# The parsers of outside input (manifest, config and environment, event
# JSON, Kafka records, Avro, webhooks, signatures), each for FUZZ_SECS;
# `make test` runs each for 2 s. Exits 1 with the inputs if one crashes.
FUZZ_SECS ?= 600
fuzz: toolchain
	$(CARGO) run --release -p persona-bus-tests --bin persona-bus-fuzz -- --secs $(FUZZ_SECS)

# Payload schemas: per-event check and codec cost, then the Kafka backlog
# with schemas off, JSON checked and Avro (needs the registry).
bench-schemas: toolchain kafka-up registry-up handlers
	$(CARGO) bench -p persona-bus-tests --bench schemas
	$(CARGO) bench -p persona-bus-tests --bench kafka -- --schemas

# POST /api/personas/events from a separate load-generating process (this
# bench's own client, and Debian's wrk, installed here when missing).
bench-http: toolchain
	@command -v wrk >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get install -y -qq --no-install-recommends wrk; }
	$(CARGO) bench -p persona-bus-tests --bench http

# The migration plan's own stack as a peer (tools/bench-peer: KafkaJS
# 2.2.4 + better-sqlite3 12, locked; better-sqlite3 builds its native module
# with node-gyp, approved under allowScripts) against persona-bus at
# defaults, on the same topics in the same run.
PEER := tools/bench-peer
$(PEER)/node_modules/.package-lock.json: $(PEER)/package.json $(PEER)/package-lock.json
	@command -v npm >/dev/null || { echo "npm (Node.js 20) is required for the benchmark peer"; exit 1; }
	cd $(PEER) && npm ci --no-audit --no-fund

bench-peer: toolchain kafka-up $(PEER)/node_modules/.package-lock.json
	$(CARGO) build --release -p persona-bus-tests --bin persona-bus-host
	$(CARGO) bench -p persona-bus-tests --bench kafka -- --peer

# Only the Kafka benchmarks (throughput against the real broker, WASM vs
# native, latency at 1,000 events/s).
bench-kafka: toolchain kafka-up handlers
	$(CARGO) build --release -p persona-bus-tests --bin persona-bus-host
	$(CARGO) bench -p persona-bus-tests --bench kafka

# Apache Kafka 4.x (KRaft) from the official jars on Maven Central, fetched
# once into ~/.cache/persona-bus; needs Java 17 and Maven.
kafka-up:
	scripts/kafka.sh up

# A second broker with TLS and authentication beside the first: SASL_SSL
# (SCRAM-SHA-512) on 127.0.0.1:9096, mutual TLS on 127.0.0.1:9097. Writes
# build/kafka-secure.env (source it for the KAFKA_* variables).
kafka-up-secure:
	scripts/kafka.sh up-secure

# A three-broker KRaft cluster on one machine (127.0.0.1:9192-9194), for
# the leader-failover test; topics there get replication factor 3 and
# min.insync.replicas=2 (`[kafka] replication_factor = 3`).
kafka-up-cluster:
	scripts/kafka.sh up-cluster

kafka-down:
	scripts/kafka.sh down

# The plaintext broker again, with an empty data folder (its topics gone):
# the benchmarks' figures are from a broker without the thousands of
# partitions earlier runs leave behind.
kafka-reset:
	scripts/kafka.sh reset

# A real schema registry (Apicurio Registry 3.0.9 from Maven Central, in
# memory) on 127.0.0.1:8081, Confluent API at /apis/ccompat/v7.
# A real OCI registry for handlers pulled by reference (built once from the
# Go module proxy into the cache folder; scripts/oci.sh).
oci-up:
	scripts/oci.sh up

oci-down:
	scripts/oci.sh down

# cosign and wkg, for the tests that check our OCI artifacts and signatures
# against the ecosystem's own tools (built once into the cache folder).
oci-tools:
	scripts/oci-tools.sh

registry-up:
	scripts/registry.sh up

registry-down:
	scripts/registry.sh down

# Minutes, not in CI: kills and restarts a private broker under load and
# prints published / handled / duplicated / lost (BENCHMARKS.md).
soak: toolchain kafka-up
	$(CARGO) bench -p persona-bus-tests --bench soak

# Store retention under a steady load (SOAK_MINUTES, 30 by default): the
# file and RSS level off, no commit gap over 100 ms.
SOAK_MINUTES ?= 30
soak-retention: toolchain
	$(CARGO) bench -p persona-bus-tests --bench retention -- --minutes $(SOAK_MINUTES)

clean:
	rm -rf build $(DATA_DIR) $(JS_TOOLS)/node_modules
	$(CARGO) clean
