# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

PHONY_CONSOLE := chromium bench-console
.PHONY: $(PHONY_CONSOLE) install run test conformance bench bench-reactor bench-send bench-writer bench-route bench-cluster bench-flow bench-mss bench-dmp bench-docwire bench-fuzz bench-stats check demo clean pki sim-dmp

# setup.py builds intake's native hot path (engine/_hotpath.c) in place: editing it reinstalls.
$(STAMP): setup.cfg pyproject.toml setup.py engine/_hotpath.c
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP) var/pki/client-second.pem var/mss-sim-pki/ca.pem
	$(BIN)/pfi run --console

# The MSSanté simulator's test PKI the embedded mssante channel trusts (`pfi mss sim` reuses it).
var/mss-sim-pki/ca.pem: | $(STAMP)
	$(BIN)/python -c "from pathlib import Path; from engine.mss.testpki import ensure_test_pki; ensure_test_pki(Path('var/mss-sim-pki'))"

# The demo/test PKI the embedded DMP channel points at (never used with the real DMP).
var/pki/client-second.pem: | $(STAMP)
	$(BIN)/python -c "from pathlib import Path; from engine.pki import ensure_test_pki; ensure_test_pki(Path('var/pki'))"

# The shipped configuration (route tests, pfi check) names the simulators' test PKIs.
test: $(STAMP) var/mss-sim-pki/ca.pem var/pki/client-second.pem chromium
	$(BIN)/ruff check engine bench tests
	$(BIN)/ruff format --check engine bench tests
	$(BIN)/mypy engine/connectors engine/config engine/journal
	$(BIN)/python -m pytest -q tests

# The console's browser tests drive Debian's Chromium (never a downloaded browser): installed here
# when missing and we are root on Debian; otherwise those tests fail with the reason, unless
# PFI_SKIP_BROWSER=1 skips them.
chromium:
	@if [ "$$PFI_SKIP_BROWSER" != "1" ] && [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -q && apt-get install -y -q chromium; fi

# Conformance on the reference corpus: ANS example messages -> document requests, and every
# corpus CDA against the ANS verdicts (make test runs a representative subset of the latter).
conformance: $(STAMP) var/mss-sim-pki/ca.pem var/pki/client-second.pem
	$(BIN)/python -m pytest -q tests/conformance
	PFI_CONFORMANCE=full $(BIN)/python -m pytest -q -m conformance tests

check: $(STAMP) var/pki/client-second.pem var/mss-sim-pki/ca.pem
	$(BIN)/pfi check

bench: $(STAMP)
	$(BIN)/python bench/intake.py

bench-route: $(STAMP)
	$(BIN)/python bench/route.py

# intake's reactor-thread Python per message, without sockets or disk: compares two versions
bench-reactor: $(STAMP)
	$(BIN)/python bench/reactor_path.py

# the outbound send path's reactor-thread Python per delivery, without sockets or disk
bench-send: $(STAMP)
	$(BIN)/python bench/send_path.py

# the journal writer's CPU per intake record (log, fdatasync, index), in one thread, no network
bench-writer: $(STAMP)
	$(BIN)/python bench/writer_path.py

# 1, 2 and 3 nodes on one PostgreSQL journal (postgresql://postgres@127.0.0.1:5432/, or PFI_BENCH_PG) beside SQLite.
bench-cluster: $(STAMP)
	$(BIN)/python bench/cluster.py

bench-flow: $(STAMP)
	$(BIN)/python bench/flow.py

bench-mss: $(STAMP)
	$(BIN)/python bench/mss.py

# 10^6 mutated MLLP frames against an engine process on 127.0.0.1 (bounded to 3 h); exit 1 on any defect.
bench-fuzz: $(STAMP)
	$(BIN)/python bench/fuzz.py --frames 1000000 --connections 8 --seconds 10800

demo: $(STAMP)
	$(BIN)/pfi demo

clean:
	rm -rf $(VENV) var build *.egg-info

pki: $(STAMP)
	$(BIN)/python -c "from pathlib import Path; from engine.pki import ensure_test_pki; print(ensure_test_pki(Path('var/pki')).directory)"

sim-dmp: $(STAMP)
	$(BIN)/pfi sim dmp --valuesets ../shared/corpus/cda/TestContenuCDA-3-0/jeuxDeValeurs

bench-console: $(STAMP)
	$(BIN)/python bench/console.py

bench-dmp: $(STAMP)
	$(BIN)/python bench/dmp.py

bench-docwire: $(STAMP)
	$(BIN)/python bench/document_check.py

# A year of programme statistics over 10^6 generated reports (SQLite, and PostgreSQL at
# postgresql://postgres@127.0.0.1:5432/ or PFI_BENCH_PG), and intake with counting on vs off.
bench-stats: $(STAMP)
	$(BIN)/python bench/stats.py --pg
