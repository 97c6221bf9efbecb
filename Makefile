# tablehost build, demo, test and benchmark entry points.
#
# Agent components are built without debug info: it would make them ten
# times larger and slower to compile on load.
#
# Build output lives outside the clone so a second clone, or CI on the same
# machine, reuses the compiled RocksDB, librdkafka and wasmtime:
#   CARGO_TARGET_DIR   native crates (host, tests)
#   WASM_TARGET_DIR    agent components (plugins/)
#   DATA_CACHE         downloaded demo data

CACHE            ?= $(HOME)/.cache/tablehost
CARGO_TARGET_DIR ?= $(CACHE)/target
WASM_TARGET_DIR  ?= $(CACHE)/target-wasm
DATA_CACHE       ?= $(CACHE)/data
export CARGO_TARGET_DIR

PLUGINS      := flight-delays counter misbehave windowed-counter
PLUGIN_DIR   := build/plugins
FLIGHTS      := build/data/flights-3m.parquet
VEGA_VERSION := 3.2.1
TABLEHOST    := $(CARGO_TARGET_DIR)/debug/tablehost

.PHONY: all setup tansu plugins host data demo test bench clean

all: host plugins

## setup: install the system packages and Rust targets the build needs (idempotent),
## and claim the shared target directories for this checkout (see .ci/claim-target)
setup:
	@bash .ci/setup
	@CARGO_TARGET_DIR=$(CARGO_TARGET_DIR) WASM_TARGET_DIR=$(WASM_TARGET_DIR) bash .ci/claim-target

## tansu: install the tansu broker the real-broker tests start (once per machine)
tansu:
	@bash .ci/tansu

## plugins: build the example agents as wasm32-wasip2 components into build/plugins
plugins: setup
	CARGO_TARGET_DIR=$(WASM_TARGET_DIR) CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=debuginfo \
		cargo build --release --target wasm32-wasip2 $(addprefix -p ,$(PLUGINS))
	@mkdir -p $(PLUGIN_DIR)
	@for p in $(PLUGINS); do \
		cp $(WASM_TARGET_DIR)/wasm32-wasip2/release/$$(echo $$p | tr - _).wasm $(PLUGIN_DIR)/; \
	done
	@ls -l $(PLUGIN_DIR)

## host: build the tablehost binary
host: setup
	cargo build -p tablehost

## data: fetch the flights data (npm package vega-datasets) into the cache
data: $(FLIGHTS)

$(FLIGHTS):
	@mkdir -p $(DATA_CACHE) build/data
	@if [ ! -f $(DATA_CACHE)/flights-3m.parquet ]; then \
		echo "fetching vega-datasets@$(VEGA_VERSION) from the npm registry"; \
		cd $(DATA_CACHE) && npm pack --silent vega-datasets@$(VEGA_VERSION) >/dev/null && \
		tar xzf vega-datasets-$(VEGA_VERSION).tgz package/data/flights-3m.parquet && \
		mv package/data/flights-3m.parquet . && rm -rf package vega-datasets-$(VEGA_VERSION).tgz; \
	fi
	cp $(DATA_CACHE)/flights-3m.parquet $(FLIGHTS)

## demo: run the flights job end to end on the embedded cluster
demo: host plugins data
	$(TABLEHOST) demo --config plugins/flight-delays/tablehost.toml --data $(FLIGHTS)

## test: run every unit and integration test
test: plugins tansu
	cargo test --no-fail-fast -p tablehost -p tablehost-tests
	CARGO_TARGET_DIR=$(WASM_TARGET_DIR) cargo test --no-fail-fast -p tablehost-guest $(addprefix -p ,$(PLUGINS))

## bench: run the benchmarks and print their results (see BENCHMARKS.md); the dev
## profile is used so the optimised dependencies built for the demo are reused
bench: host plugins data
	cargo bench --profile dev -p tablehost --bench pipeline -- --data $(CURDIR)/$(FLIGHTS)

clean:
	rm -rf build
