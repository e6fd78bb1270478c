# make test: lint + docs + the test suite (what CI runs, via .ci/run); make demo: both faces of RD.
# Needs only Python >= 3.10 (with venv): the first target builds .venv and installs the extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS := test,bench,notebooks,flax,docs,lint
RDESCENT_DATA_DIR ?= $(abspath ../shared/data)
export RDESCENT_DATA_DIR
export NO_MKDOCS_2_WARNING := 1

.PHONY: demo test lint docs venv clean bench-smoke

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstalls whenever pyproject.toml (dependencies, extras) changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m benchmarks.demo

# ruff (lint + format) over the package, tests and benchmarks; mypy over rdescent/ (pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check rdescent tests benchmarks notebooks/_build.py docs/hooks.py
	$(BIN)/ruff format --check rdescent tests benchmarks notebooks/_build.py docs/hooks.py
	$(BIN)/mypy

# The site (mkdocs.yml) with warnings as errors; docs/hooks.py renders the benchmark page
# from benchmarks/results/cpu/*.json. Output in site/.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

# The suite and the docstring examples (--doctest-modules and its flags are in pyproject.toml);
# loadgroup keeps each xdist_group on one worker (test_sharding's one subprocess).
# One docs build per run: tests/test_site.py reads the site that `docs` just built
# (RDESCENT_SITE_DIR); run alone, it builds one of its own.
test: lint docs
	RDESCENT_SITE_DIR=$(abspath site) $(BIN)/python -m pytest -q -n auto --dist loadgroup tests rdescent

# Every benchmark study at --quick sizes (3-6 minutes on 2 cores; the default suite runs two).
bench-smoke: $(STAMP)
	$(BIN)/python -m pytest -q -n 0 --run-slow -m benchmark_smoke tests/test_benchmarks_smoke.py

clean:
	rm -rf $(VENV) demo_output site .cache .mypy_cache .ruff_cache
