# Two commands set up a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
EXTRAS ?= dev,onnx,openvino,serve,ray

.PHONY: demo test install system-deps bench bench-check lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The constraints file pins the CPU torch build; pyproject.toml keeps a broad range for GPU users.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed system-deps

# espeak-ng speaks the built-in dataset's audio; installed from Debian's packages when missing.
system-deps:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  echo "installing espeak-ng (apt)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng) >/dev/null \
	  || { echo "could not install espeak-ng: run 'apt-get install espeak-ng' as root"; exit 1; }; }

demo: install
	$(BIN)/mmfurnace demo

# ruff first (its rules are in pyproject.toml): CI fails on lint as on a test.
# pytest exits 5 when it collected nothing; that must fail, not pass quietly.
test: install
	$(BIN)/ruff check mmfurnace tests benchmarks
	@$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

bench: install
	$(BIN)/python benchmarks/loader_throughput.py --tiny

# Quick benchmark suite compared against the committed baseline; non-zero exit on regression.
bench-check: install
	$(BIN)/python benchmarks/quick.py --compare benchmarks/baselines/quick-cpu.json

lint: install
	$(BIN)/ruff check mmfurnace tests benchmarks

clean:
	rm -rf $(VENV) data runs report exports
