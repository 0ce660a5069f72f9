# Sira: two commands on a fresh machine.
#   make serve   create .venv, install the kernel and bundled plugins, run the gateway on 127.0.0.1:8080
#   make test    the same install with test extras, then the whole suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PLUGINS  := $(wildcard plugins/*/pyproject.toml)
EXAMPLES := $(wildcard examples/*/pyproject.toml)
PKGS     := . $(patsubst %/pyproject.toml,%,$(PLUGINS) $(EXAMPLES))
STAMP    := $(VENV)/.installed

.PHONY: install serve test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml $(PLUGINS) $(EXAMPLES)
	$(BIN)/python -m pip install -q $(foreach p,$(PKGS),-e '$(p)[test]')
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/sira serve --config kernel.toml

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check sira_kernel plugins tests examples bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/kernel.py
	$(BIN)/python bench/gateway.py

clean:
	rm -rf $(VENV) .sira
