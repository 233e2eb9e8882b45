# The two commands of the README: `make demo` and `make test`. Both set everything up from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.plugtrain-installed
# The extras: plugin distributions of their own (extras/*/pyproject.toml): the experiment trackers and the
# segmentation task. Installed editable for `make test` (not for `make demo`, which needs none of mlflow, wandb or
# segmentation-models-pytorch); re-installed when a pyproject changes.
EXTRAS := extras/plugtrain-mlflow extras/plugtrain-wandb extras/plugtrain-segmentation extras/plugtrain-monai
EXTRAS_STAMP := $(VENV)/.plugtrain-extras-installed
TESTS := tests $(addsuffix /tests,$(EXTRAS))

.PHONY: demo test test-fast bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(EXTRAS_STAMP): $(STAMP) $(addsuffix /pyproject.toml,$(EXTRAS))
	$(PY) -m pip install -q $(foreach e,$(EXTRAS),-e '$(e)[test]')
	touch $(EXTRAS_STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/plugtrain train specs/quickstart.toml --overwrite

# The core suite and each extra's tests in one session (rootdir and [tool.pytest.ini_options] of ./pyproject.toml;
# the extras' test files have distinct names and no conftest.py, so nothing clashes with tests/conftest.py).
# Two pytest-xdist workers, a test file each at a time (--dist loadfile: a module's shared fixtures are built once):
# most tests wait on one single-threaded child process, which left the second core idle. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS) --dist loadfile)

test: $(EXTRAS_STAMP)
	$(PY) -m pytest -q $(XDIST) --durations=15 $(TESTS)

test-fast: $(EXTRAS_STAMP)
	$(PY) -m pytest -q $(XDIST) -m "not slow" $(TESTS)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py --write-results

lint: $(STAMP)
	$(VENV)/bin/ruff check plugtrain tests benchmarks examples extras

clean:
	rm -rf runs .pytest_cache
