# PoseKD: `make run` serves the default models on http://127.0.0.1:8000 (PORT=… for another; embedded mode, no Redis);
# `make test` runs the test suite. Both create .venv/ and install what they need on a fresh machine.
PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
TEACHERS ?= $(if $(POSEKD_TEACHERS),$(POSEKD_TEACHERS),../shared/teachers)
PYTEST_ARGS ?=
PORT     ?= $(if $(POSEKD_PORT),$(POSEKD_PORT),8000)

.PHONY: run test bench lint typecheck clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,train]'
	touch $@ $(VENV)/.runtime

run: $(VENV)/.runtime
	@if [ -d "$(TEACHERS)" ]; then \
		echo "registering the teachers from $(TEACHERS) (skipped when already in the store)"; \
		$(BIN)/posekd models import --teachers "$(TEACHERS)" --if-missing; \
	fi
	@-$(BIN)/posekd models list
	POSEKD_PORT=$(PORT) $(BIN)/posekd serve

test: $(VENV)/.dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.dev
	$(BIN)/posekd bench images
	$(BIN)/posekd bench students
	$(BIN)/posekd bench queue
	$(BIN)/posekd bench video
	$(BIN)/posekd bench runtime
	$(BIN)/posekd bench preprocess

lint: $(VENV)/.dev
	$(BIN)/ruff check service distill tests bench posekd
	$(BIN)/lint-imports

typecheck: $(VENV)/.dev
	$(BIN)/mypy service distill bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
