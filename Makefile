# decodelab: two entry points on a fresh machine.
#   make demo   run the main job offline on the shipped embedded default
#   make test   run the default test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# torch is pinned to the CPU wheel that the build machines carry locally; any torch>=2.3 works.
TORCH_SPEC ?= torch==2.13.0
# used through their torchvision-free modules only (see pyproject.toml, the `eval` extra); torchmetrics is
# for the cross-check tests only and imports once decodelab.eval.features has shelled torch-fidelity
NODEPS_SPEC ?= torch-fidelity==0.4.0 lpips==0.1.4 torchmetrics==1.9.0 lightning-utilities==0.15.3

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,text,eval]" "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --no-deps $(NODEPS_SPEC)
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
