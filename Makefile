# cpt: the two commands a new user runs are `make demo` and `make test`.
# Both depend on `setup`, which is idempotent: it installs only what is missing.

SHELL      := /bin/bash
PYTHON     ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
APT_PKGS   := btrfs-progs libbtrfsutil-dev gcc busybox-static nftables iproute2 openssh-server openssh-client
STAMP      := $(VENV)/.installed
# the project's packages (pyproject.toml [tool.setuptools] packages, top level)
PKGS       := cptimage cpt storage ve snapshot cli
COMPILED   := $(VENV)/.compiled

.PHONY: setup demo test lint bench codec clean

setup: $(STAMP) $(COMPILED)

$(STAMP): pyproject.toml
	@missing=""; for p in $(APT_PKGS); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "setup: installing system packages:$$missing"; \
	    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

# Bytecode of every module, written here once.  PYTHONDONTWRITEBYTECODE=1 (set on these
# machines) or a read-only checkout stops Python from WRITING __pycache__, not from reading
# it: without this step every command compiled every module it imports at each start (the
# generated image codec alone takes ~30 ms to compile, ~1.5 ms to load compiled).  Re-run
# when a source changes, as `make test` and the other targets do through `setup`.
$(COMPILED): $(STAMP) $(shell find $(PKGS) -name '*.py')
	$(PY) -m compileall -q -j0 $(PKGS)
	@touch $@

# Regenerate cptimage/_codec.py from the construct declarations (cptimage/schema.py) after
# changing records.py, fields.py or schema.py; tests/test_codec.py fails until you do.
codec: setup
	$(PY) -m cptimage.codegen

demo: setup
	$(PY) demo/demo.py

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
