# Two commands: `make demo` (HW1 on demo data) and `make test`. Both create .venv if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench bench-gpu docs proof clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/run.py hw1 train --demo

# the whole suite, one pytest-xdist worker per core, each test file in one worker
test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile

# the developer's quick tier: everything not marked slow
test-fast: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check common hw scripts tests

bench: $(STAMP)
	$(PY) scripts/bench/trainer_overhead.py
	$(PY) scripts/bench/cpu_step.py
	$(PY) scripts/bench/hw1_cv.py
	$(PY) scripts/bench/hw1_kfold.py
	$(PY) scripts/bench/hw2_pipeline.py
	$(PY) scripts/bench/hw3_pipeline.py
	$(PY) scripts/bench/hw4_pipeline.py
	$(PY) scripts/bench/hw5_batches.py
	$(PY) scripts/bench/hw5_decode.py
	$(PY) scripts/bench/hw6_train.py
	$(PY) scripts/bench/hw8_pipeline.py
	$(PY) scripts/bench/hw1_tune.py
	$(PY) scripts/bench/ranking.py
	$(PY) scripts/bench/real_cost.py

# the GPU recipes; meant for a CUDA machine (minutes there), hours on a CPU
bench-gpu: $(STAMP)
	$(PY) scripts/bench/gpu_recipes.py
	$(PY) scripts/bench/gpu_sequences.py

# every homework's ladder (course sample, our rungs) trained on the real data in ../shared/data
# and scored on held-out real data: docs/proof.md and docs/img/proof.png (about an hour on 2 cores)
proof: $(STAMP)
	$(PY) scripts/proof/run.py

clean:
	rm -rf $(VENV) runs

# the README's pictures: every homework's demo trained, its curves.png (and HW6's sample grid)
# copied to docs/img/ (about 35 minutes on 2 CPU cores)
docs: $(STAMP)
	$(PY) scripts/docs.py
