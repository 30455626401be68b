# `make run` and `make test` work on a fresh machine: each creates .venv and
# installs the package into it first. The stamp file makes re-runs quick; it is
# renewed whenever pyproject.toml changes.

# The first interpreter that runs and is >= 3.11, python3.11 preferred.
# Override with `make PYTHON=/path/to/python3.x ...`.
PYTHON ?= $(shell for p in python3.11 python3.12 python3.13 python3.14 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { echo $$p; break; }; done)

VENV        := .venv
VPY         := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

PYTEST_ARGS ?=
RUN_ARGS    ?=
DEMO_ARGS   ?=
BENCH_ARGS  ?=

.PHONY: all venv run demo test bench clean distclean

all: test

$(VPY):
	@if [ -z "$(PYTHON)" ]; then \
		echo "error: lightning-db needs Python >= 3.11 (python3.11 or newer on PATH, or make PYTHON=...)" >&2; exit 1; fi
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else \
		"error: lightning-db needs Python >= 3.11; $(PYTHON) is " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VPY)
	$(VPY) -m pip install -e '.[test]'
	@touch $@

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(VPY) -m pip install -e '.[test,bench]'
	@touch $@

venv: $(STAMP)

# The Redis-protocol server on ./data (port 6380) until Ctrl-C.
run: $(STAMP)
	$(VENV)/bin/lightning-db serve --data ./data $(RUN_ARGS)

demo: $(STAMP)
	$(VENV)/bin/lightning-db run --data ./data $(DEMO_ARGS)

test: $(STAMP)
	$(VPY) -m pytest -q $(PYTEST_ARGS)

bench: $(BENCH_STAMP)
	$(VPY) -m bench.run $(BENCH_ARGS)

# Build and test leftovers only; the database under ./data is never removed here.
clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis bench/out
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
