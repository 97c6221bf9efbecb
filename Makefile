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
#   TOOLS              componentize-py and jco, installed by .ci/setup

CACHE            ?= $(HOME)/.cache/tablehost
CARGO_TARGET_DIR ?= $(CACHE)/target
WASM_TARGET_DIR  ?= $(CACHE)/target-wasm
DATA_CACHE       ?= $(CACHE)/data
TOOLS            ?= $(CACHE)/tools
export CARGO_TARGET_DIR

PLUGINS      := flight-delays counter misbehave windowed-counter
PLUGIN_DIR   := build/plugins
FLIGHTS      := build/data/flights-3m.parquet
VEGA_VERSION := 3.2.1
TABLEHOST    := $(CARGO_TARGET_DIR)/debug/tablehost

# The counting agent in Python and JavaScript. The tools' pinned versions
# are in each agent's requirements.txt and package-lock.json.
COMPONENTIZE_PY := $(TOOLS)/py/bin/componentize-py
JCO             := $(TOOLS)/js/node_modules/.bin/jco

.PHONY: all setup tansu plugins host data demo test bench clean

all: host plugins

## setup: install the system packages and Rust targets the build needs (idempotent),
## and claim the shared target directories for this checkout (see .ci/claim-target)
setup:
	@CACHE=$(CACHE) TOOLS=$(TOOLS) bash .ci/setup
	@CARGO_TARGET_DIR=$(CARGO_TARGET_DIR) WASM_TARGET_DIR=$(WASM_TARGET_DIR) bash .ci/claim-target

## tansu: install the tansu broker the real-broker tests start (once per machine)
tansu:
	@bash .ci/tansu

## plugins: build the example agents as wasm32-wasip2 components into build/plugins, the
## Python and JavaScript counters, and the Rust counter as a wasm32-unknown-unknown core module
plugins: setup
	CARGO_TARGET_DIR=$(WASM_TARGET_DIR) CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=debuginfo \
		cargo build --release --target wasm32-wasip2 $(addprefix -p ,$(PLUGINS))
	@mkdir -p $(PLUGIN_DIR)
	@for p in $(PLUGINS); do \
		cp $(WASM_TARGET_DIR)/wasm32-wasip2/release/$$(echo $$p | tr - _).wasm $(PLUGIN_DIR)/; \
	done
	CARGO_TARGET_DIR=$(WASM_TARGET_DIR) CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=debuginfo \
		cargo build --release --target wasm32-unknown-unknown -p counter
	cp $(WASM_TARGET_DIR)/wasm32-unknown-unknown/release/counter.wasm $(PLUGIN_DIR)/counter_core.wasm
	@ls -l $(PLUGIN_DIR)

# The Python and JavaScript agents are built by the rules below, after
# setup and before the cargo build above.
plugins: $(PLUGIN_DIR)/counter_py.wasm $(PLUGIN_DIR)/counter_js.wasm

# componentize-py writes __pycache__ next to counter.py; .gitignore lists it.
$(PLUGIN_DIR)/counter_py.wasm: plugins/counter-py/counter.py plugins/counter-py/requirements.txt wit/agent.wit | $(COMPONENTIZE_PY)
	@mkdir -p $(PLUGIN_DIR)
	$(COMPONENTIZE_PY) --quiet -d wit -w agent componentize -p plugins/counter-py counter -o $@

# jco resolves the entry file against the folder it runs in, so every path is
# absolute. --backend quickjs embeds QuickJS through componentize-qjs, and
# --backend-qjs-disable-async picks its runtime without component-model
# async, which the host's wasmtime does not enable.
$(PLUGIN_DIR)/counter_js.wasm: plugins/counter-js/counter.js plugins/counter-js/package-lock.json wit/agent.wit | $(JCO)
	@mkdir -p $(PLUGIN_DIR)
	$(JCO) componentize $(CURDIR)/plugins/counter-js/counter.js --wit $(CURDIR)/wit --world-name agent \
		--backend quickjs --backend-qjs-disable-async -o $(CURDIR)/$@

$(COMPONENTIZE_PY) $(JCO):
	@CACHE=$(CACHE) TOOLS=$(TOOLS) bash .ci/setup

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
	cargo bench --profile dev -p tablehost --bench platform

clean:
	rm -rf build
