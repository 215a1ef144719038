# FS: `make run` starts the server, `make test` runs every test. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages (installed only if missing): `python3 -m venv` needs ensurepip, which Debian
# ships apart; real-program tests and benchmarks need the others (iproute2: `ip netns` and `tc`
# for the shaped link of tests/test_shaped_link.py and `python -m bench --suite link`; chromium:
# the web page in a real browser, tests/test_web_page.py; nginx: the HTTP bench's baseline).
VENV_DEBS := python3-venv
TEST_DEBS := prometheus iproute2 chromium
BENCH_DEBS := rsync iproute2 nginx
ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test lint format bench setup clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || bash .ci/apt-install $(VENV_DEBS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(STAMP)

run: setup
	$(VENV)/bin/fsserver $(ARGS)

test: setup
	@bash .ci/apt-install $(TEST_DEBS)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	@bash .ci/apt-install $(BENCH_DEBS)
	$(PY) -m bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info build dist bench/.work
