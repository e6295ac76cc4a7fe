# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv and install everything the project needs first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BROWSER := $(VENV)/.browser
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test test-heavy test-fast test-gpu bench-gpu demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools<82' wheel
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Debian's chromium + chromedriver for the page test (apt; only `make test` needs them).
$(BROWSER): scripts/install_browser.sh $(STAMP)
	bash scripts/install_browser.sh
	touch $(BROWSER)

# Two pytest-xdist workers on 2 cores (tests run their torch ops on 1-2 threads; up to 4 workers on bigger machines).
XDIST := -n auto --maxprocesses 4

test: $(STAMP) $(BROWSER)
	$(PY) -m pytest -q $(XDIST) -m 'not heavy'

# The learning proofs of minutes each (the joint encoder uses the question, NegCLIP learns composition, the mCLIP
# student reaches its teacher): kept out of `make test`'s 10-minute budget.
test-heavy: $(STAMP)
	$(PY) -m pytest -q $(XDIST) -m heavy

test-fast: $(STAMP)
	$(PY) -m pytest -q $(XDIST) -m 'not slow'

# Only the tests marked `gpu` (fp16 extraction, GPU faiss, GradScaler, NCCL); they skip cleanly without CUDA.
test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu

# The GPU check (under 5 minutes on one GPU): the `gpu` tests, then the extraction throughput table (ViT-B/32- and
# RN101-shaped models, fp16, CPU vs GPU JPEG decoding, 5,000 generated photos; docs/extraction.md "GPU").
bench-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu -p no:cacheprovider
	$(PY) benchmarks/bench_extract_gpu.py

demo: $(STAMP)
	PYTHON=$(PY) bash scripts/demo.sh

bench: $(STAMP)
	$(PY) benchmarks/bench_extract.py
	$(PY) benchmarks/bench_index.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_serve.py

clean:
	rm -rf runs/ .pytest_cache
