# remind2reg: the two commands a newcomer needs are `make demo` and `make test`.
# Everything is installed into a local virtual environment ($(VENV)); NiftyReg is built
# once from its PyPI sdist and cached (see scripts/install_niftyreg.sh).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
DEMO_DIR ?= demo
# One case of each realistic simulator family, at 0.5 mm like ReMIND2Reg, in a 96 mm cube
# (192^3 voxels instead of 256^3, so the demo runs in a few minutes on 2 cores).
DEMO_FAMILIES ?= post-resection pre-resection tissue-echo weak-contrast
DEMO_GRID ?= 192
DEMO_FOV_MM ?= 96
PYTEST_ARGS ?=

.PHONY: help install demo test test-all test-docker lint format clean

help:
	@echo "make demo      install, generate one synthetic case per simulator family, register, evaluate, report"
	@echo "make test      install, then run the fast test suite (what CI runs)"
	@echo "make test-all  the whole suite, slow tests included"
	@echo "make test-docker  build the image and run it in a Docker engine (root: installs and starts one)"
	@echo "make lint      ruff check + format check"
	@echo "make clean     remove the virtual environment and generated data"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-run the install when the project's dependencies, their pins or the NiftyReg script change.
# constraints.txt pins every dependency (the image installs the same versions);
# build-constraints.txt pins NiftyReg's build tools (read by scripts/install_niftyreg.sh).
$(VENV)/.installed: pyproject.toml constraints.txt build-constraints.txt scripts/install_niftyreg.sh | $(BIN)/python
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,peers,synth,cluster]"
	scripts/install_niftyreg.sh $(BIN)/python
	touch $@

install: $(VENV)/.installed

demo: install
	rm -rf $(DEMO_DIR)
	$(BIN)/remind2reg synth --out $(DEMO_DIR)/data --family $(DEMO_FAMILIES) --cases $(words $(DEMO_FAMILIES)) \
		--grid $(DEMO_GRID) --fov-mm $(DEMO_FOV_MM) --seed 0
	$(BIN)/remind2reg register --input $(DEMO_DIR)/data --output $(DEMO_DIR)/pred
	$(BIN)/remind2reg evaluate --data $(DEMO_DIR)/data --pred $(DEMO_DIR)/pred \
		--json $(DEMO_DIR)/metrics.json --csv $(DEMO_DIR)/metrics.csv
	$(BIN)/remind2reg report --data $(DEMO_DIR)/data --pred $(DEMO_DIR)/pred --out $(DEMO_DIR)/report

test: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The container test (tests/test_docker_image.py, marked docker and slow): builds the image on a
# stand-in base and runs it in a real engine. As root it installs the engine if absent and starts
# dockerd if none answers (and stops it afterwards); elsewhere without an engine the tests skip
# and say why, except with CI=true, where they fail. See docs/container.md.
test-docker: install
	TORCH_VERSION=$(TORCH_VERSION) scripts/docker_engine.sh run \
		$(BIN)/python -m pytest -m docker tests/test_docker_image.py $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache *.egg-info
