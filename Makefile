# Two entry points for a fresh machine with only Python and pip: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DATA ?= demo_data
DEMO_WORKDIR ?= demo_workdir
PYTEST_ARGS ?=
# Test processes (pytest-xdist, work stealing so neither waits idle at the end); compile time
# dominates, so two halve the suite on 2 cores.
PYTEST_WORKERS ?= 2
# The real SemanticKITTI sample beside the checkout, when there is one (tests skip without it).
export COARSE3D_SAMPLE_DIR ?= $(wildcard $(abspath ../shared/data/semantickitti_sample))

.PHONY: install test demo benchmarks clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS) tests

# Synthetic scans -> TFRecords at 0.1% labels -> train the demo config (ends with its per-class
# table) -> benchmark-format predictions of the val split -> the official evaluation of those files.
demo: $(STAMP)
	$(PY) -m data_prep --dataset synthetic --raw_dir $(DEMO_DATA)/raw --out_dir $(DEMO_DATA)/tfds \
	  --label_ratio 0.001 --workers 2
	$(PY) -m coarse3d_jax.main --config configs/demo.py --workdir $(DEMO_WORKDIR) \
	  --config.data_dir=$(DEMO_DATA)/tfds
	$(PY) -m coarse3d_jax.predict --workdir $(DEMO_WORKDIR) --raw_dir $(DEMO_DATA)/raw \
	  --out_dir $(DEMO_WORKDIR)/predictions --split val --batch_size 4 --pictures 2 --ply 1
	$(PY) -m coarse3d_jax.evaluate --dataset synthetic --raw_dir $(DEMO_DATA)/raw \
	  --pred_dir $(DEMO_WORKDIR)/predictions --split val --json $(DEMO_WORKDIR)/official_eval.json

benchmarks: $(STAMP)
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_models.py
	$(PY) benchmarks/bench_data_prep.py

clean:
	rm -rf $(DEMO_DATA) $(DEMO_WORKDIR)
