# Two entry points for a fresh machine with only Python and pip: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DATA ?= demo_data
DEMO_WORKDIR ?= demo_workdir
PYTEST_ARGS ?=

.PHONY: install test demo benchmarks clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

clean:
	rm -rf $(DEMO_DATA) $(DEMO_WORKDIR)
