# One-command set-up: every target creates the virtual environment it needs.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow bench clean postgres-server

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[search,test]'
	touch $@

demo: $(BIN)/.installed  ## the main job: demo search on ShapesWorld, report in runs/demo
	$(BIN)/dime-nas search experiments/demo.yaml

test: $(BIN)/.installed postgres-server  ## the default (fast) test suite
	$(BIN)/python -m pytest -q

# The distributed-search tests start a throw-away PostgreSQL server (tests/pg_server.py);
# install Debian's server when it is missing. Without it those tests are skipped with a reason.
postgres-server:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null 2>&1 || \
	    echo "PostgreSQL could not be installed: its tests will be skipped"; }

test-slow: $(BIN)/.installed  ## also the slow checks (big reference models)
	$(BIN)/python -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(VENV) *.egg-info
