# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv first (once).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is installed first, pinned for reproducible dev/CI runs; on a GPU machine PyPI serves a CUDA build of it.
TORCH ?= torch==2.13.0
DEMO_OUT ?= out/cifar10-sample-uge

.PHONY: setup demo test test-fast clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# Protect the embedded 500-image CIFAR-10 sample, offline (surrogate encoder), in a few minutes on 2 CPU cores.
demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/uge-hf protect examples/cifar10-sample \
		--authorized resnet18-w16-seed0 --encoder surrogate \
		--trajectory-epochs 15 --generator-epochs 10 --batch-size 64 --set recipe.batch_size=64 \
		--output $(DEMO_OUT) --overwrite

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) out
