# Thin wrapper: every job lives in tasks.py, which needs only Python and pip.
PYTHON ?= python3

.PHONY: setup demo test bench lint clean

setup demo test bench:
	$(PYTHON) tasks.py $@

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy detector encoder pipeline weights shapesworld benchmarks

clean:
	rm -rf .venv out .pytest_cache
