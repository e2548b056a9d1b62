# The two commands of the README. Both create ./.venv and install what they need.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean system-deps

$(STAMP): setup.cfg pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH (Python 3.11)"; exit 1; }
	@command -v java >/dev/null || { echo "need Java 17 on PATH (Spark)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

## Run the whole pipeline of every declared model — CDNOW repurchase (features/projects/cdnow) and NYC
## departure delays (features/projects/flights) — through the DAGs generated from their declarations on an
## embedded Airflow, and print where each one's outputs are. `make demo DEMO_MODEL=dep_delay_15`: one model.
DEMO_MODEL ?=
demo: $(STAMP)
	$(BIN)/lockstep demo $(if $(DEMO_MODEL),--model $(DEMO_MODEL))

## Run the test suite (what CI runs): also installs the servers the tests start (PostgreSQL, Redis, Chromium).
test: $(STAMP) system-deps
	$(BIN)/python -m pytest

system-deps:
	@scripts/install-system-deps.sh

## Benchmarks (long; not part of the tests).
bench: $(STAMP)
	$(BIN)/python -m bench

## Lint and format check (what CI runs before the tests); `ruff format jobs dags tests bench` fixes the format.
lint: $(STAMP)
	$(BIN)/ruff check features jobs dags tests bench
	$(BIN)/ruff format --check features jobs dags tests bench

clean:
	rm -rf .lockstep
