# Two commands do everything on a fresh machine (each installs what it needs first):
#   make quickstart   train a tiny SAR CLIP on embedded synthetic SAR (no downloads)
#   make test         lint + the whole test suite
#   CPU=1             the same with PyTorch's CPU-only wheels, in .venv-cpu (about 1.9 GB instead of 6.4 GB)
PYTHON ?= python3
# PyTorch's CPU wheel index; PyPI's Linux torch is the CUDA build (with nvidia-* and triton: 5.3 GB of the 6.4)
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
ifeq ($(CPU),1)
VENV ?= .venv-cpu
else
VENV ?= .venv
endif
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1

.PHONY: install quickstart test lint benchmark clean

# The venv is rebuilt only when pyproject.toml is newer than the last install. With CPU=1, torch and torchvision
# come from the CPU index first (pyproject's ranges), the project's install keeps them, and a CUDA build that
# slipped in (an index that could not be reached, a pip config adding another) stops the install. The last step
# renders `fit --help` once, which is kept on disk (lightning_sarclip/commands/help_cache.py).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
ifeq ($(CPU),1)
	$(PY) -m pip install --index-url $(TORCH_CPU_INDEX) 'torch>=2.4,<=2.14.1' 'torchvision>=0.19,<=0.29.1'
	$(PY) -m pip install -e '.[dev]'
	$(PY) -c "import sys, torch; sys.exit(0 if torch.version.cuda is None else \
	  f'CPU=1 installed torch {torch.__version__}, a CUDA build: is $(TORCH_CPU_INDEX) reachable?')"
else
	$(PY) -m pip install -e '.[dev]'
endif
	-COLUMNS=$$(tput cols 2>/dev/null || echo 80) $(PY) -m lightning_sarclip fit --help > /dev/null
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(PY) -m lightning_sarclip fit --config experiments/quickstart.yaml --ckpt_path last

lint: install
	$(VENV)/bin/ruff check lightning_sarclip tests benchmarks
	$(VENV)/bin/hadolint Dockerfile

test: install lint
	$(PY) -m pytest -q

benchmark: install
	$(PY) benchmarks/train_step.py

clean:
	rm -rf runs lightning_logs .pytest_cache .ruff_cache
