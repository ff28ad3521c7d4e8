# Two entry points on a fresh machine: `make demo` and `make test`. Each creates or updates .venv from
# requirements.lock, idempotently (a stamp file records the lock it was built from).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
PYTEST_ARGS ?=

.PHONY: venv demo test test-all lock clean

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -U pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: venv
	$(BIN)/lorascope run configs/demo.yaml

test: venv
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-all: venv
	$(BIN)/python -m pytest -q -m "" $(PYTEST_ARGS)

# Re-resolve the pins from pyproject.toml's ranges (needs network access to PyPI).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q torch==2.13.0 -e '.[test]'
	.venv-lock/bin/pip freeze --exclude-editable | sed 's/+cpu//' | grep -v '^lorascope' > requirements.lock.new
	{ head -3 requirements.lock; cat requirements.lock.new; } > requirements.lock.tmp && mv requirements.lock.tmp requirements.lock
	rm -rf .venv-lock requirements.lock.new

clean:
	rm -rf $(VENV) results
