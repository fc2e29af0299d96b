# `make test` and `make demo` work from a fresh clone: they create .venv and
# install requirements.txt into it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test demo benchmark experiment clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

demo: $(VENV)/.installed
	$(BIN)/python demo.py

experiment: $(VENV)/.installed
	$(BIN)/python experiments/kather_recipes.py

benchmark: $(VENV)/.installed
	$(BIN)/python benchmarks/reader_throughput.py
	$(BIN)/python benchmarks/extraction_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache demo_output experiment_output
