# han-infra: the two commands are `make demo` and `make test`; the rest are their parts.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
# Colour for a person at a terminal, none in CI; scripts/demo.py (make demo) turns it off: its output goes to a log.
export ANSIBLE_FORCE_COLOR := $(if $(CI),0,1)
SANITY_DIR ?= /tmp/han-infra-sanity

.PHONY: help bench demo demo-down test static testbed testbed-down venv lint syntax pytest unit integration sanity molecule clean

help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# scripts/demo.py runs each step's ansible-playbook with its output (without colour) in reports/demo-<time>.log and
# prints a line per step and per drill scenario; on a failure, the step, the end of its output and the log's path.
demo: venv ## Set up, bring the testbed up and run the failover drill on it (the main job); a line per step.
	$(BIN)/python scripts/demo.py up

demo-down: venv ## Stop the workers and the control planes the demo started.
	$(BIN)/python scripts/demo.py down

# The static checks need no testbed and the tests mostly wait on services: they run side by side (the
# checks' output is kept in reports/static-checks.log and shown when the tests end), which saves their minutes.
STATIC_LOG := reports/static-checks.log
test: venv ## Set up and run every check and test.
	@echo "==> Static checks (lint, syntax, sanity) beside the tests; their output: $(STATIC_LOG)"
	@started=$$(date +%s); $(MAKE) --no-print-directory static > $(STATIC_LOG) 2>&1 & static=$$!; \
	status=0; $(MAKE) --no-print-directory testbed pytest || status=$$?; \
	static_status=0; wait $$static || static_status=$$?; \
	echo "==> Static checks (exit $$static_status):"; cat $(STATIC_LOG); \
	if [ $$status -ne 0 ] || [ $$static_status -ne 0 ]; then echo "==> make test: FAILED"; exit 1; fi; \
	echo "==> make test: all checks passed in $$(( $$(date +%s) - started )) s"

static: lint syntax sanity ## The checks that need no testbed: ruff, mypy, ansible-lint, syntax, ansible-test sanity.
	@echo "==> static checks passed"

$(VENV)/.installed: pyproject.toml .ci/constraints.txt
	@sh roles/testbed/files/host_prereqs.sh
	@echo "==> Creating $(VENV) and installing han_worker with its tools"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --constraint .ci/constraints.txt --no-deps mediapipe==0.10.21
	$(BIN)/pip install --quiet --disable-pip-version-check --constraint .ci/constraints.txt --editable '.[dev,pose-runtime]'
	@# Bytecode now, as pip compiles a wheel it installs: an editable install has none, and where
	@# PYTHONDONTWRITEBYTECODE is set every han-worker process would compile the package again (~0.3 s).
	$(BIN)/python -m compileall -q han_worker > /dev/null
	touch $@

venv: $(VENV)/.installed ## Create .venv with han_worker, Ansible and the test tools.

testbed: venv ## Build and start the local testbed (Slurm, munge, loopback sshd) as root.
	@echo "==> Building the testbed"
	ansible-playbook playbooks/testbed.yml

testbed-down: venv ## Stop what the testbed started.
	ansible-playbook playbooks/testbed.yml -e testbed_state=absent

lint: venv ## ruff, mypy (strict), ansible-lint (production profile).
	ruff check .
	ruff format --check .
	mypy
	ansible-lint --profile production

syntax: venv ## ansible-playbook --syntax-check of every playbook.
	for playbook in playbooks/*.yml; do ansible-playbook --syntax-check "$$playbook"; done

# Two lanes side by side (most tests wait on services), then the tests that take the testbed down, alone:
# tests/run_lanes.sh says which tests go where; tests/README.md why.
pytest: venv ## Every test (integration needs the testbed) and molecule, in two lanes side by side.
	tests/run_lanes.sh

unit: venv ## Unit tests only.
	pytest tests/unit

integration: venv ## Integration tests only (needs the testbed).
	pytest tests/integration

# ansible-test needs the collection inside an ansible_collections/ tree it can resolve, so it runs on a built copy.
sanity: venv ## ansible-test sanity on a built copy of the collection.
	rm -rf $(SANITY_DIR) && mkdir -p $(SANITY_DIR) ~/.ansible/test/cache
	install -m 0644 tests/sanity/get_pip_offline.py ~/.ansible/test/cache/get_pip_24_2.py
	ansible-galaxy collection build --force --output-path $(SANITY_DIR) .
	ansible-galaxy collection install --force --no-deps -p $(SANITY_DIR)/tree $(SANITY_DIR)/han-infra-*.tar.gz
	cd $(SANITY_DIR)/tree/ansible_collections/han/infra && ansible-test sanity --venv --python 3.11 --color no

molecule: venv ## Molecule scenarios (default driver, on this machine; the SSH ones need the testbed).
	for role in testbed pegasus_env control_plane; do (cd roles/$$role && molecule test); done

bench: testbed ## Benchmarks (dispatch vs RQ/Celery, endpoint selection): prints figures, writes reports/bench-*.
	python -m tests.bench

clean: ## Remove .venv and generated files (the testbed keeps running; see testbed-down).
	rm -rf $(VENV) reports/bench-* reports/drill-* reports/demo-* $(STATIC_LOG) .pytest_cache .mypy_cache .ruff_cache .hypothesis $(SANITY_DIR)
