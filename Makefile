# One-command entry points. Each target creates .venv from pyproject.toml when missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Two OpenMP pools on two cores are very slow: libraries get one thread per process
# unless a command sets its own n_jobs.
export OMP_NUM_THREADS ?= 1

.PHONY: setup test demo bench lint clean

$(BIN)/ftml: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "Need $(PYTHON) on PATH (Python 3.11)."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,postgres,plot]'
	@touch $(BIN)/ftml

setup: $(BIN)/ftml

# Two pytest workers, each test file on one worker (module fixtures are built once): the
# tests are mostly single-threaded subprocesses, so two cores roughly halve the wall time.
test: setup
	$(BIN)/ruff check ml strategies tests bench
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

demo: setup
	$(BIN)/ftml demo --config config.json

# BENCH=bench.bench_freqai reruns one benchmark and keeps the others' stored results.
bench: setup
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,postgres,plot,bench]'
	$(BIN)/python -m bench.run_all $(BENCH)

lint: setup
	$(BIN)/ruff check ml strategies tests bench

clean:
	rm -rf $(VENV) .pytest_cache
