# The two commands of the README. Each creates .venv if missing and installs torch (CPU wheel) first,
# so no dependency can pull a CUDA build.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
export OMP_WAIT_POLICY := PASSIVE
export TOKENIZERS_PARALLELISM := false
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast install install-gpu install-vllm bench clean chromium

install: $(TEST_STAMP)

# `make demo` needs the package only; `make test` adds the test and data extras (TRL, spaCy, datatrove, ...).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,data,ray,deepspeed]'
	touch $(TEST_STAMP)

# GPU machines: CUDA torch of the same version as the CPU pin (wheel index $(CUDA): cu126, cu128, cu130...), the
# package with its test extras, then flash-attn built against that torch. Not run by `make test`.
CUDA ?= cu128
TORCH_INDEX := https://download.pytorch.org/whl/$(CUDA)
GPU_STAMP := $(VENV)/.installed-gpu

install-gpu: $(GPU_STAMP)

$(GPU_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 --index-url $(TORCH_INDEX)
	$(PY) -m pip install -q -e '.[test]' torch==2.13.0
	$(PY) -m pip install -q --no-build-isolation -e '.[gpu]' torch==2.13.0
	$(PY) -c "import torch, flash_attn; assert torch.cuda.is_available(), 'no CUDA device visible'; \
	  print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0), \
	  'flash-attn', flash_attn.__version__)"
	touch $(STAMP) $(GPU_STAMP)

# vLLM in its own venv (it pins its own torch and an older transformers); serve a trained model with
#   .venv-vllm/bin/vllm serve runs/<run>/final --served-model-name m   (its chat_template.jinja is the trained one)
# and evaluate with eval.backend=openai eval.base_url=http://127.0.0.1:8000/v1 eval.served_model=m
install-vllm:
	test -x .venv-vllm/bin/python || python3 -m venv .venv-vllm
	.venv-vllm/bin/python -m pip install -q vllm==0.32.0

demo: $(STAMP)
	$(VENV)/bin/mixtune demo $(DEMO_ARGS)

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# The report's browser test needs Chromium (Debian's package); CI machines start without one.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing chromium (browser test of the HTML report)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

test: $(TEST_STAMP) chromium
	$(PY) -m pytest -q tests

# the quick loop while developing: everything but the end-to-end runs (CI runs `make test`, all of them)
test-fast: $(TEST_STAMP)
	$(PY) -m pytest -q -m "not slow" tests

bench: $(TEST_STAMP)
	$(PY) benchmarks/sft_throughput.py

clean:
	rm -rf runs .pytest_cache
