# Lineage: `make serve` builds the site with every figure and serves it;
# `make test` builds every figure from a clean cache, then runs the whole test suite (with a strict site build).
# Both create or reuse the virtual environment in .venv and install what they need.

PYTHON ?= python3
VENV   ?= .venv
# The torch wheel to install when the venv has none. On a GPU machine, `make TORCH=torch ...`
# (or any torch>=2.4 you install yourself into .venv first) is used as is.
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
export NO_MKDOCS_2_WARNING := 1
# MkDocs stamps the build date into sitemap.xml(.gz); pin it to the last commit so that a build is a
# function of the sources (tests/test_links.py checks two builds are byte-identical).
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
export SOURCE_DATE_EPOCH

.PHONY: all setup serve build figures corpus test clean

all: build

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install "$(TORCH)"
	$(BIN)/python -m pip install -e ".[test]"
	@touch $@

setup: $(VENV)/.installed

serve: $(VENV)/.installed
	$(BIN)/mkdocs serve

build: $(VENV)/.installed
	$(BIN)/mkdocs build --strict

figures: $(VENV)/.installed
	$(BIN)/python -m figures build

# The language models (GPT, BERT, T5, and Imagen's text encoder) read a snapshot of the notes' prose,
# refimpl/notes.txt, so that editing a page retrains nothing. Take a new one on purpose: it retrains them.
corpus: $(VENV)/.installed
	$(BIN)/python -c "from refimpl.text import snapshot; print(snapshot())"

# A fresh figure/model cache for every run: every figure is built from a clean cache first, on all cores,
# then the tests run (their site build finds the figures built; the learning tests read the same models).
# Built beside the test workers instead, the figure processes shared the cores with them by time slices,
# which cost each about 30% more CPU. --dist loadgroup: the tests marked xdist_group("site") share one
# worker and so one site build. Reports (external links, browser screenshots) land in .cache/test/reports.
test: $(VENV)/.installed
	rm -rf .cache/test
	LINEAGE_CACHE=$(CURDIR)/.cache/test $(BIN)/python -m figures build
	LINEAGE_CACHE=$(CURDIR)/.cache/test $(BIN)/python -m pytest -n 2 --dist loadgroup --durations=15

clean:
	rm -rf site .cache runs
