# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv and install into it when needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: install demo test test-fast test-under-load lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("Python >= 3.11 is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: here this is the CPU wheel; an unpinned torch pulls
	# several GB of CUDA packages. For a CUDA build see README ("GPU").
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	# The second loader engine (tests/test_engines.py) without its pandas<3 cap, which would
	# take pandas 3 away from everything else; its other needs are the package's own.
	$(PY) -m pip install --quiet --no-deps 'stackstac>=0.5'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/unique-cube demo

test: $(STAMP)
	$(PY) -m pytest

# Pure unit tests: no server, cluster, world or training (tests marked `integration` are out).
test-fast: $(STAMP)
	$(PY) -m pytest -m "not integration"

# The tests of faults, retries, locks and worker supervision, beside two processes that keep
# both CPUs of a CI machine busy (started and stopped by pytest: tests/conftest.py).
LOAD_TESTS = tests/test_faults_daily.py tests/test_faults_reads.py tests/test_faults_stac.py \
	tests/test_distributed.py tests/test_retries.py tests/test_store.py \
	tests/test_stac_server.py tests/test_gpp.py
test-under-load: $(STAMP)
	$(PY) -m pytest --cpu-burners 2 $(LOAD_TESTS)

lint: $(STAMP)
	$(VENV)/bin/ruff check unique_cube tests benchmarks
	$(VENV)/bin/ruff format --check unique_cube tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format unique_cube tests benchmarks
	$(VENV)/bin/ruff check --fix unique_cube tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
