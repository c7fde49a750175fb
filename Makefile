# Every target creates .venv when missing and (re)installs the package when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: demo test bench install system-deps clean

# System packages the tests use, from Debian's archive when missing (CI runs as root in a fresh container):
# headless Chromium and its chromedriver render the HTML report (never a browser download).
SYSTEM_PACKAGES := chromium chromium-driver
SYSTEM_COMMANDS := /usr/bin/chromium /usr/bin/chromedriver

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all,test,bench]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(VENV)/bin/fairfm demo

system-deps:
	@missing=""; for c in $(SYSTEM_COMMANDS); do test -x $$c || missing=yes; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "make system-deps: run as root, or: sudo apt-get install -y $(SYSTEM_PACKAGES)" >&2; exit 1; fi; \
	  echo "installing $(SYSTEM_PACKAGES) from Debian's archive …"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; }; \
	fi

# Two test processes on the 2-core CI machine (pytest-xdist): every test is independent (its own tmp folders, its
# own loopback services), and the suite takes half the wall time.
TEST_WORKERS ?= 2

test: $(STAMP) system-deps
	$(PY) -m pytest -q -n $(TEST_WORKERS)

bench: $(STAMP)
	$(PY) benchmarks/bench_metrics.py --write BENCHMARKS.md
	$(PY) benchmarks/bench_bootstrap.py --write BENCHMARKS.md
	$(PY) benchmarks/bench_prepare_chexpert.py --write BENCHMARKS.md
	$(PY) benchmarks/bench_features.py --write BENCHMARKS.md
	$(PY) benchmarks/bench_runs.py --write BENCHMARKS.md

clean:
	rm -rf $(VENV) demo_out .pytest_cache .hypothesis
