# The README's commands: `make toy` (the whole study on toy data), `make check` (the everyday quick tier: unit
# tests, lint, dry runs and config errors, no training) and `make test` (the full suite, what CI runs).
VENV ?= .venv
PYTHON ?= python3
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: toy check test install

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt
	touch $@

resources/toy/toy_dataset.json: | $(VENV)/.installed
	python -m workflow_scripts make-toy-data --out resources/toy

toy: $(VENV)/.installed resources/toy/toy_dataset.json
	snakemake --profile profiles/local --configfile config/toy.yaml
	snakemake --configfile config/toy.yaml --report results/report.html
	@echo "Done. Results: results/ (metrics: results/metrics/summary.tsv). Report: results/report.html"

# Two pytest-xdist workers, one per core: one runs the toy and SLURM studies and the tests reading them (one
# group, tests/conftest.py), the other every other test.
PYTEST := python -m pytest -n 2 --dist loadgroup

check: $(VENV)/.installed
	$(PYTEST) -m "unit or dag"

test: $(VENV)/.installed
	$(PYTEST)
