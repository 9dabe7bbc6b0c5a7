# Two entry points: `make demo` (set up, then score the bundled example radiographs) and
# `make test` (set up, then run the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-packages docs check-resolution lint bench serve clean

# `make demo` installs what the package needs; `make test` adds the test tools (the dev extra).
$(BIN)/boneage: pyproject.toml constraints.txt
	@echo "Installing boneage and its dependencies into $(VENV): about 2 minutes the first time (pip says what it fetches)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar on -c constraints.txt -e .
	touch $@

$(VENV)/.dev: $(BIN)/boneage
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

setup: $(BIN)/boneage

demo: setup
	$(BIN)/boneage predict examples/*.png --sex M --save-preprocessed out/demo-preprocessed

# Without Chromium and Orthanc the browser and PACS tests skip, each saying why; `make test-packages`
# installs them with apt-get, as CI (.ci/run) does.
test: $(VENV)/.dev
	$(BIN)/python -m pytest -q

test-packages:
	bash scripts/install_test_packages.sh

# The documentation site (mkdocs.yml, docs/) into site/; --strict: a broken link or anchor fails it.
docs: $(VENV)/.dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# `pip install .` resolves without constraints.txt, with the pip that Python bundles (a dry run).
check-resolution:
	bash .ci/check_resolution.sh

lint: $(VENV)/.dev
	$(BIN)/ruff check boneage ray_jobs tests benchmarks scripts deploy

bench: setup
	$(BIN)/python benchmarks/preprocess_stages.py

serve: setup
	$(BIN)/boneage serve --config serve_config.yaml

clean:
	rm -rf $(VENV) out site .pytest_cache
