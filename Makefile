# The two set-up commands: `make demo` (the main job on the embedded data) and `make test`.
# Each creates .venv with pip if it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CDIFF := $(VENV)/bin/cdiff

.PHONY: demo quickstart test test-fast install clean-demo anatomy

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# the anatomies of the synthetic benchmark (once, into $${CDIFF_CACHE:-~/.cache/cdiff}); offline, demo runs with MNI152 only
anatomy: $(VENV)/.installed
	-$(CDIFF) fetch-anatomy

demo: $(VENV)/.installed anatomy
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

quickstart: $(VENV)/.installed anatomy
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/quickstart.sh

test: $(VENV)/.installed
	$(PY) -m pytest -q

# the edit loop: everything but the tests marked slow (the app under load, the studies, crash safety, ...)
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

clean-demo:
	rm -rf demo
