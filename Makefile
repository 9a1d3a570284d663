# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test conformance bench bench-mss check demo clean

$(STAMP): setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/pfi run

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

check: $(STAMP)
	$(BIN)/pfi check

bench: $(STAMP)
	$(BIN)/python bench/intake.py

bench-mss: $(STAMP)
	$(BIN)/python bench/mss.py

clean:
	rm -rf $(VENV) var build *.egg-info
