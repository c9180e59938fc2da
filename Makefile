# Two commands on a fresh machine with python3: `make up` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install up down test test-slow test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/marquee up

down: $(STAMP)
	$(BIN)/marquee down

# The layer contract (pyproject.toml, [tool.importlinter]) first: a wrong-way import fails the run.
# pytest exits 5 when it collects nothing: that is a broken suite here, never a pass.
test: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest tests -q -x --timeout=900 -m "not slow"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; exit $$rc

# The long scenarios (each has a short form in `make test`).
test-slow: $(STAMP)
	$(BIN)/python -m pytest tests -q --timeout=3600 -m slow; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-slow: no slow tests were collected" >&2; exit 1; fi; exit $$rc

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

bench: $(STAMP)
	$(BIN)/marquee bench ingest --json
	$(BIN)/marquee bench features --json
	$(BIN)/marquee bench train --json
	$(BIN)/marquee bench serve --json

clean:
	rm -rf $(VENV) .marquee .pytest_cache
