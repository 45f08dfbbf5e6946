# The two commands a newcomer needs: `make demo` and `make test` (see README.md).
# Both install what they need: Python packages into .venv, Debian packages via apt-get.
# `make image` builds the container image (README "Container image"); `make test` builds it
# too, from the build cache, for the image smoke test (tests/test_image.py).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test soak lint typecheck unit bench services image clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

services:
	bash scripts/ensure-services.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) services
	$(BIN)/pytest -m "not soak"

# The long safety proofs of SAFETY.md beyond the subset `test` runs: every kill point, every
# fault on every remote, and the property-based tests (marked `hypothesis`) with the `soak`
# profile of tests/conftest.py.
soak: $(STAMP) services
	JANITOR_HYPOTHESIS_PROFILE=soak $(BIN)/pytest -m "soak or hypothesis" --hypothesis-show-statistics

test: lint typecheck unit

demo: $(STAMP) services
	$(BIN)/python scripts/demo.py

image: $(STAMP)
	$(BIN)/python scripts/image.py build

bench: $(STAMP) services
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build
