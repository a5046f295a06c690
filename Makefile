# The COLO project's entry points; README.md explains each.
#
#   make            install dependencies, configure (once) and build
#   make demo       build, then run a protected VM pair and show it working
#   make check      build, then run every test (unit, base qtests, end-to-end)

BUILD ?= build
PY := /usr/bin/python3
SHELL := /bin/bash

# ccache keys on paths relative to this folder, so another clone of the repo
# on the same machine (CI's) reuses the cache.
export CCACHE_BASEDIR := $(CURDIR)
export CCACHE_NOHASHDIR := 1
export COLO_BUILD_DIR := $(abspath $(BUILD))

QEMU_BUILD := $(BUILD)/qemu
# QEMU's own Makefile runs ninja one job at a time unless told otherwise.
QEMU_JOBS ?= -j$(shell nproc)
GUEST := $(BUILD)/guest

.PHONY: all deps build qemu firmware guest demo check check-unit \
        check-qtest check-colo check-slow check-model bench \
        check-base-colo-absent clean distclean help

all: build

help:
	@sed -n '1,/^$$/p' Makefile

deps:
	@sh scripts/install-deps.sh

$(BUILD)/config.mak:
	./configure --build-dir=$(BUILD)

# The staged tree is refreshed on every build (new project files are linked
# in, changed patches re-applied); then QEMU's own Makefile builds what changed.
qemu: deps $(BUILD)/config.mak
	@sh scripts/stage.sh "$$(sed -n 's/^BASE := //p' $(BUILD)/config.mak)" $(BUILD)/src
	@$(MAKE) --no-print-directory -C $(QEMU_BUILD) $(QEMU_JOBS)
	@sh scripts/link-firmware.sh $(BUILD)

guest: deps
	@bash tests/guest/build-guest.sh $(GUEST)

build: qemu guest

demo: build
	@$(PY) tests/colo/demo.py

check: build
	@bash scripts/run-checks.sh all

check-unit: qemu
	@bash scripts/run-checks.sh unit

check-model: deps
	@bash scripts/run-checks.sh model

check-qtest: qemu
	@bash scripts/run-checks.sh qtest

check-colo: build
	@bash scripts/run-checks.sh colo

# The fault-injection loops at full count (make check runs 3 kills at random
# and 10 nemesis rounds).
check-slow: build
	@COLO_FAULT_RUNS=20 COLO_SOAK_S=600 COLO_NEMESIS_ROUNDS=100 bash scripts/run-checks.sh colo

# Ours side by side with the base's own COLO (built from the same source).
bench: build
	@sh scripts/build-base-colo.sh $(BUILD)/base-colo
	@$(PY) tests/colo/bench.py $(BENCH_ARGS)
	@$(PY) tests/colo/bench_disk.py $(BENCH_DISK_ARGS)
	@$(PY) tests/colo/bench_kv.py $(BENCH_KV_ARGS)

check-base-colo-absent: qemu
	@sh scripts/check-no-base-colo.sh $(BUILD)

clean:
	rm -rf $(QEMU_BUILD) $(GUEST) $(BUILD)/unit $(BUILD)/results

distclean:
	rm -rf $(BUILD)
