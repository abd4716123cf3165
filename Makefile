# One-command set-up: every target creates the virtual environment it needs.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow bench clean postgres-server mutation

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[search,test]'
	touch $@

demo: $(BIN)/.installed  ## the main job: demo search on ShapesWorld, report in runs/demo
	$(BIN)/dime-nas search experiments/demo.yaml

test: $(BIN)/.installed postgres-server  ## the default (fast) test suite, one process per core (at most 4)
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4

# The distributed-search tests start a throw-away PostgreSQL server (tests/pg_server.py);
# install Debian's server when it is missing. Without it those tests are skipped with a reason,
# except in CI (CI=true), where a failed install fails here and a missing server fails the tests.
PG_INITDB ?= /usr/lib/postgresql/*/bin/initdb
APT_GET ?= apt-get
postgres-server:
	@ls $(PG_INITDB) >/dev/null 2>&1 || \
	  { ($(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq postgresql) \
	      >.postgres-install.log 2>&1 && rm -f .postgres-install.log; } || \
	  if [ "$$CI" = true ]; then \
	    tail -n 20 .postgres-install.log >&2; \
	    echo "PostgreSQL could not be installed (log: .postgres-install.log): CI must run its tests" >&2; exit 1; \
	  else echo "PostgreSQL could not be installed (log: .postgres-install.log): its tests will be skipped"; fi

test-slow: $(BIN)/.installed  ## also the slow checks (big reference models)
	$(BIN)/python -m pytest -q -m "slow or not slow"

# Mutation testing of the safety-critical modules (hours; not part of `make test`): see
# docs/testing.md. MODULES= picks some (names: python experiments/mutation.py --list).
mutation: $(BIN)/.installed postgres-server
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[mutation]'
	$(BIN)/python experiments/mutation.py $(MODULES)

clean:
	rm -rf $(VENV) *.egg-info
