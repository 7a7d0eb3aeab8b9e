# Two commands: `make demo` (set up, then run the main job on the bundled model)
# and `make test` (set up, then lint, type-check, build the docs and run the tests).
# Set-up is a local .venv with the CPU build of torch (constraints/cpu.txt), so a
# CPU-only machine never pulls CUDA packages. GPU users: see the README.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.attrib-installed

.PHONY: setup demo test lint typecheck docs pytest browser bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints/cpu.txt "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -c constraints/cpu.txt -e ".[dev,docs]"
	touch $(STAMP)

demo: setup
	$(BIN)/attrib demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: setup
	$(BIN)/mypy

docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# The browser tests drive Debian's chromium + chromedriver (same package version, no download by
# selenium-manager). Installed with apt when missing and we may; otherwise those tests skip, saying why.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -qq chromium chromium-driver >/dev/null || echo "warning: could not install chromium"; \
	else echo "warning: chromium/chromedriver missing; browser tests will skip (apt-get install chromium chromium-driver)"; fi

pytest: setup browser
	$(BIN)/python -m pytest -m "not slow" -q

test: lint typecheck docs pytest

bench: setup
	$(BIN)/python examples/bench_streaming.py --json out/bench_streaming.json --quick

clean:
	rm -rf site out .pytest_cache .mypy_cache .ruff_cache
