# decodelab: two entry points on a fresh machine.
#   make demo   run the main job offline on the shipped embedded default
#   make test   run the default test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The two set-up commands pin a torch/torchvision pair that load together (the library itself needs only
# torch>=2.3). On x86_64 these are CUDA builds that also run on the CPU; their wheels lie on the build machines.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev,text,eval,neuro]" $(TORCH_SPEC)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/decodelab demo --out demo_out

# pytest exits 5 when it collects nothing: that is a failure here, not a pass.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) demo_out
