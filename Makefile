# Two commands set everything up on a fresh machine (Python >= 3.10 with pip):
#   make demo   - create .venv, install virion, run the demo on the built-in synthetic data
#   make test   - create .venv, install virion with its test extra, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/virion demo

# pytest exits 5 when it collected no tests: that is a failure, said plainly.
test: install
	@$(BIN)/python -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: no tests were collected" >&2; fi; \
	exit $$status

clean:
	rm -rf $(VENV) .pytest_cache
