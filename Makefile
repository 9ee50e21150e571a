# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv first (once).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is installed first, pinned for reproducible dev/CI runs; on a GPU machine PyPI serves a CUDA build of it.
TORCH ?= torch==2.13.0
DEMO_OUT ?= out/cifar10-sample-uge

.PHONY: setup browser demo demo-paper test test-fast clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# Protect the embedded 500-image CIFAR-10 sample offline with the keyed method (seconds); the key goes to
# $(DEMO_OUT).private. `make demo-paper` runs the paper's method instead (surrogate encoder, a few minutes on 2 cores).
demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/uge-hf protect examples/cifar10-sample --method keyed \
		--authorized resnet18-w16-seed0 --set recipe.epochs=15 --output $(DEMO_OUT) --overwrite

demo-paper: setup
	HF_HUB_OFFLINE=1 $(BIN)/uge-hf protect examples/cifar10-sample --method gradient-matching \
		--authorized resnet18-w16-seed0 --encoder surrogate \
		--trajectory-epochs 15 --generator-epochs 10 --batch-size 64 --set recipe.batch_size=64 \
		--output $(DEMO_OUT)-paper --overwrite

# The demo's browser test (tests/test_demo.py) drives a system Chromium with playwright. Installed here when
# missing, from Debian's package (as root, or with passwordless sudo); a no-op once present.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
		if [ "$$SUDO" = none ] || ! command -v apt-get >/dev/null 2>&1; then \
			echo "make: no Chromium for the browser test; install it (Debian: apt-get install chromium) and rerun" >&2; exit 1; \
		fi; \
		echo "installing Chromium (apt) for the browser test"; log=$$(mktemp); \
		{ $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
			>$$log 2>&1 || { cat $$log >&2; rm -f $$log; exit 1; }; rm -f $$log; \
	}

test: setup browser
	$(BIN)/python -m pytest -q

test-fast: setup browser
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) out
