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

# Synthetic scans -> TFRecords at 0.1% labels -> train the demo config -> per-class table.
demo: $(STAMP)
	$(PY) -m data_prep --dataset synthetic --raw-dir $(DEMO_DATA)/raw --out-dir $(DEMO_DATA)/tfds \
	  --label-ratio 0.001 --workers 2
	$(PY) -m coarse3d_jax.main --config configs/demo.py --workdir $(DEMO_WORKDIR) \
	  --config.data_dir=$(DEMO_DATA)/tfds

benchmarks: $(STAMP)
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_models.py
	$(PY) benchmarks/bench_data_prep.py

clean:
	rm -rf $(DEMO_DATA) $(DEMO_WORKDIR)
