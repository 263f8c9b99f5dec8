# The two commands of the README. Each creates .venv if missing and installs torch (CPU wheel) first,
# so no dependency can pull a CUDA build.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
export OMP_WAIT_POLICY := PASSIVE
export TOKENIZERS_PARALLELISM := false
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast install bench clean chromium

install: $(TEST_STAMP)

# `make demo` needs the package only; `make test` adds the test and data extras (TRL, spaCy, datatrove, ...).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,data,ray]'
	touch $(TEST_STAMP)

demo: $(STAMP)
	$(VENV)/bin/mixtune demo

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# The report's browser test needs Chromium (Debian's package); CI machines start without one.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing chromium (browser test of the HTML report)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

test: $(TEST_STAMP) chromium
	$(PY) -m pytest -q tests

# the quick loop while developing: everything but the end-to-end runs (CI runs `make test`, all of them)
test-fast: $(TEST_STAMP)
	$(PY) -m pytest -q -m "not slow" tests

bench: $(TEST_STAMP)
	$(PY) benchmarks/sft_throughput.py

clean:
	rm -rf runs .pytest_cache
