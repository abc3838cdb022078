# Two entry points (see README): `make demo` runs the main job on the shipped model,
# `make test` runs the test suite. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: requirements.txt requirements-test.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/extract_features examples/ --out out/examples.h5 --detector shapes-detector --preset shapes --overwrite
	$(PY) -c "from pipeline import answer; print(answer('examples/scene_000.png', 'what color is the circle?'))"

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy detector encoder pipeline weights

bench: setup
	$(PY) benchmarks/bench_detector.py --quick

clean:
	rm -rf $(VENV) out .pytest_cache
