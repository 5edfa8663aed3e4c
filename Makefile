# mixcd: set up, run the default experiment, test, reproduce comparisons.
# `make help` lists the targets. Everything runs from the repository's own virtualenv (.venv).

VENV ?= .venv
PY := $(VENV)/bin/python
MIXCD := $(VENV)/bin/mixcd
# torch/torchvision pins that install here from local wheels; override on other machines,
# e.g. `make install TORCH_PINS="torch torchvision"`.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: help install data demo test test-all lint bench

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-24s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## create .venv and install mixcd with its dev tools

data: ## install Fashion-MNIST from Debian's dataset-fashion-mnist (needs root/apt)
	@if [ -f $(FMNIST) ]; then echo "Fashion-MNIST present: $(FMNIST)"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else echo "run: sudo apt-get install dataset-fashion-mnist  (or set task download=true with internet)"; exit 1; fi

demo: install data ## run the default experiment (pretrain, snapshot, fine-tune with random rehearsal, eval)
	$(MIXCD) train

test: install data ## run the test suite (what CI runs)
	$(PY) -m pytest -q -m "not slow"

test-all: install data ## the test suite including slow tests
	$(PY) -m pytest -q

lint: install ## ruff
	$(VENV)/bin/ruff check .
