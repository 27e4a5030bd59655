# Two commands do everything on a fresh machine (each installs what it needs first):
#   make quickstart   train a tiny SAR CLIP on embedded synthetic SAR (no downloads)
#   make test         lint + the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1

.PHONY: install quickstart test lint benchmark clean

# The venv is rebuilt only when pyproject.toml is newer than the last install.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
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
