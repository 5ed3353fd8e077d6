PYTHON ?= python3

.PHONY: generate test lint bench setup

generate:
	scripts/gen-proto.sh

test:
	$(PYTHON) -m pytest -q tests

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

bench:
	$(PYTHON) benchmarks/bench_validate.py

setup:
	scripts/setup.sh
