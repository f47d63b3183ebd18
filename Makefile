# Two commands for a newcomer: `make train` (the main job) and `make test`.
# Both create .venv and install the pinned stack first when it is missing or stale.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
# WikiText-2 without internet: the read-only copy beside the repository, when there is one.
WIKITEXT2_DIR ?= $(wildcard $(CURDIR)/../shared/data/wikitext-2)
export WIKITEXT2_DIR

.PHONY: setup train test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

train: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash base_model.sh

# One pytest worker per core (pytest-xdist), each test file on one worker: the module-scoped
# fixtures (a trained run, a built corpus) are built once. The files go out in collection order,
# the heaviest first (tests/conftest.py), not xdist's by-count order. PYTEST_WORKERS=0 runs in
# this process.
PYTEST_WORKERS ?= auto

test: $(STAMP)
	$(VENV)/bin/ruff check par_xl tests benchmarks notebooks *.py
	$(VENV)/bin/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
