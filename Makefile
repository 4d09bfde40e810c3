# prefect-bacalhau-publish: two commands, `make test` and `make demo`; both set everything up on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: venv servers chromium test lint typecheck pytest demo bench clean stack stack-down

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found (Python >= 3.11 is required)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,fast,ipfshttpclient]"
	touch $(STAMP)

venv: $(STAMP)

servers:
	scripts/test-servers

chromium:
	scripts/ensure-chromium

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

pytest: venv servers chromium
	$(VENV)/bin/pytest -n 2 --dist loadfile -p no:cacheprovider

test: lint typecheck pytest

demo: venv servers
	$(PY) flows/demo.py

stack: venv servers
	$(PY) scripts/stack.py up

stack-down:
	@if [ -x $(PY) ]; then $(PY) scripts/stack.py down; fi

bench: venv servers
	@command -v pigz >/dev/null || { apt-get update -q && apt-get install -y -q pigz; }
	@command -v rclone >/dev/null || apt-get install -y -q rclone || echo "bench: no rclone, its rows are skipped"
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
