# One-command set-up: every target creates the virtual environment it needs.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow bench clean

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

demo: $(BIN)/.installed  ## the main job: demo search on ShapesWorld, report in runs/demo
	$(BIN)/dime-nas search experiments/demo.yaml

test: $(BIN)/.installed  ## the default (fast) test suite
	$(BIN)/python -m pytest -q

test-slow: $(BIN)/.installed  ## also the slow checks (big reference models)
	$(BIN)/python -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(VENV) *.egg-info
