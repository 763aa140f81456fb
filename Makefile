# remind2reg: the two commands a newcomer needs are `make demo` and `make test`.
# Everything is installed into a local virtual environment ($(VENV)); NiftyReg is built
# once from its PyPI sdist and cached (see scripts/install_niftyreg.sh).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
DEMO_DIR ?= demo
DEMO_CASES ?= 2
DEMO_GRID ?= 128
PYTEST_ARGS ?=

.PHONY: help install demo test test-all lint format clean

help:
	@echo "make demo      install, generate $(DEMO_CASES) synthetic cases, register, evaluate (prints the TRE table)"
	@echo "make test      install, then run the fast test suite (what CI runs)"
	@echo "make test-all  the whole suite, slow tests included"
	@echo "make lint      ruff check + format check"
	@echo "make clean     remove the virtual environment and generated data"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-run the install when the project's dependencies or the NiftyReg script change.
$(VENV)/.installed: pyproject.toml scripts/install_niftyreg.sh | $(BIN)/python
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[dev,peers,synth]"
	scripts/install_niftyreg.sh $(BIN)/python
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/remind2reg synth --out $(DEMO_DIR)/data --cases $(DEMO_CASES) --grid $(DEMO_GRID) --seed 0
	$(BIN)/remind2reg register --input $(DEMO_DIR)/data --output $(DEMO_DIR)/pred
	$(BIN)/remind2reg evaluate --data $(DEMO_DIR)/data --pred $(DEMO_DIR)/pred \
		--json $(DEMO_DIR)/metrics.json --csv $(DEMO_DIR)/metrics.csv
	$(BIN)/remind2reg report --data $(DEMO_DIR)/data --pred $(DEMO_DIR)/pred --out $(DEMO_DIR)/report

test: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache *.egg-info
