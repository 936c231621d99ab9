# Set-up on a fresh machine is part of every target: the virtual environment is
# built in .venv/ on first use and rebuilt when pyproject.toml changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: venv demo test lint format bench clean test-blender-4.2 test-blender-newest

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,train]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m famous_addon.demo --out $(DEMO_OUT)

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

test: lint
	$(VENV)/bin/pytest -q

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The tests on the oldest and the newest Blender the zips claim (outside `make test`:
# each builds a venv of its own, ~1 GB, and runs the whole suite, ~2.5 min):
# bpy 4.2 LTS (Python 3.11, NumPy 1.26, OpenCV 4.11) and bpy 5.3 (Python 3.13,
# NumPy 2, OpenCV 4.14, the OpenCV the 5.1+ zips bundle). PyTorch is left out of
# both: the training tests skip there.
BPY_OLDEST ?= 4.2.23
BPY_NEWEST ?= 5.3.0
PYTHON313 ?= $(shell command -v python3.13 >/dev/null 2>&1 && python3.13 -c "" 2>/dev/null \
	&& echo python3.13 || ls $$HOME/.pyenv/versions/3.13*/bin/python3.13 2>/dev/null | tail -1)
RUNTIME_DEPS := scipy tifffile mrcfile natsort tqdm tomli-w scikit-image matplotlib trimesh \
	"dask[distributed]" pytest hypothesis packaging

.venv-bpy42/.installed: pyproject.toml
	test -x .venv-bpy42/bin/python || $(PYTHON) -m venv .venv-bpy42
	.venv-bpy42/bin/python -m pip install --quiet -e . pytest hypothesis packaging bpy==$(BPY_OLDEST)
	touch $@

test-blender-4.2: .venv-bpy42/.installed
	.venv-bpy42/bin/python -m pytest -q -p no:cacheprovider

.venv-newest/.installed: pyproject.toml
	test -n "$(PYTHON313)" || { echo "test-blender-newest needs Python 3.13 (set PYTHON313)"; exit 1; }
	test -x .venv-newest/bin/python || $(PYTHON313) -m venv .venv-newest
	.venv-newest/bin/python -m pip install --quiet bpy==$(BPY_NEWEST) \
		opencv-python-headless==4.14.0.94 $(RUNTIME_DEPS)
	touch $@

# the project is not installed there (it says Python 3.11): pytest imports it from here
test-blender-newest: .venv-newest/.installed
	.venv-newest/bin/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) .venv-bpy42 .venv-newest $(DEMO_OUT) build dist *.egg-info
