# Two commands set everything up on a fresh machine (Python >= 3.10 with pip):
#   make demo   - create .venv, install virion, run the demo on the built-in synthetic data
#   make test   - create .venv, install virion with its test extra, lint, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/virion demo

# ruff's lint and format check (configured in pyproject.toml; .pre-commit-config.yaml runs the same).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Lint first, then the suite. pytest exits 5 when it collected no tests: a failure, said plainly.
test: install lint
	@$(BIN)/python -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: no tests were collected" >&2; fi; \
	exit $$status

clean:
	rm -rf $(VENV) .pytest_cache
