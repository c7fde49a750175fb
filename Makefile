# Every target creates .venv when missing and (re)installs the package when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: demo test bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all,test,bench]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(VENV)/bin/fairfm demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_metrics.py --write BENCHMARKS.md
	$(PY) benchmarks/bench_bootstrap.py --write BENCHMARKS.md
	$(PY) benchmarks/bench_prepare_chexpert.py --write BENCHMARKS.md
	$(PY) benchmarks/bench_features.py --write BENCHMARKS.md
	$(PY) benchmarks/bench_runs.py --write BENCHMARKS.md

clean:
	rm -rf $(VENV) demo_out .pytest_cache .hypothesis
