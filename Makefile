# `make book` opens the book, `make test` runs every test, `make bench` prints the fork figures,
# `make measure` measures this machine's real kernel, `make chapters` re-runs every chapter in a
# fresh kernel and stores its outputs (timed, against the 30 s budget), `make site` builds the
# book as a static web site in build/site/ that works offline (npm fetches the widget manager once).
# Each creates .venv on first use (with the Python that runs `python3`, 3.11 or newer) and
# reuses it after; it is rebuilt when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# JupyterLab refuses to run as root unless told to.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: book test bench measure chapters site

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "ptsim needs Python 3.11 or newer, and $(PYTHON) is " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

# Opens on the first chapter that book.toml lists (or on the folder, while it lists none).
book: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(ROOT_FLAG) $$($(BIN)/python -m tools.book first)

test: $(STAMP)
	@sh tools/ensure-chromium.sh
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/fork_bench.py

measure: $(STAMP)
	$(BIN)/python -m ptsim.host.measure

chapters: $(STAMP)
	$(BIN)/python -m tools.book run

site: $(STAMP)
	$(BIN)/python -m tools.site
