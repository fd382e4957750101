# The two commands of the README: `make report` (the main job) and `make test`.
# Both create .venv on first use. PyTorch is installed first and pinned by machine type, because
# a bare `torch` requirement would pull a multi-GB CUDA build from the index.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH_PINS := torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
endif
PARAMS ?= params/default.yaml
STAMP := $(VENV)/.cmtlib-installed

.PHONY: install report test test-slow lab clean-reports

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[all]'
	$(PY) -m ipykernel install --prefix $(VENV) --name cmtlib --display-name "cmtlib (.venv)" > /dev/null
	touch $(STAMP)

report: $(STAMP)
	$(VENV)/bin/cmt report --params $(PARAMS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -m slow

lab: $(STAMP)
	# Notebooks run from notebooks/: keep prepared data in the repo's data/, not notebooks/data/.
	cd notebooks && CMT_DATA_DIR=$(CURDIR)/data ../$(VENV)/bin/jupyter lab

clean-reports:
	rm -rf reports/*/ reports/index.html
