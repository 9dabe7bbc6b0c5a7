# Two entry points: `make demo` (set up, then score the bundled example radiographs) and
# `make test` (set up, then run the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench serve clean

$(BIN)/boneage: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

setup: $(BIN)/boneage

demo: setup
	$(BIN)/boneage predict examples/*.png --sex M --save-preprocessed out/demo-preprocessed

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check boneage ray_jobs tests benchmarks

bench: setup
	$(BIN)/python benchmarks/preprocess_stages.py

serve: setup
	$(BIN)/boneage serve --config serve_config.yaml

clean:
	rm -rf $(VENV) out .pytest_cache
