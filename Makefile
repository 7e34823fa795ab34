# volagent: developer and operator entry points. Every target installs what it needs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= $(if $(wildcard /etc/volagent/volagent.toml),/etc/volagent/volagent.toml,examples/local.toml)
# Debian packages: the runtime (python, mount helpers) and the test bed (a private dockerd,
# busybox for the test image, bindfs as the EFS stand-in, libfuse2 for the counting FUSE
# stand-in (fusepy), packer and systemd for the ship checks,
# prometheus for promtool and a real server checking the alert rules and the dashboard,
# strace for the rack bench's count of file calls).
RUNTIME_DEBS := python3 python3-venv python3-pip e2fsprogs util-linux
TESTBED_DEBS := docker.io docker-compose busybox-static bindfs fuse3 libfuse2 packer debootstrap systemd iproute2 shellcheck prometheus strace
# The virtual machine test bed (tests/vm): QEMU on the host; the guest is built from Debian's
# mirror with debootstrap and cached with the other test downloads.
VM_DEBS := qemu-system-x86 qemu-utils debootstrap e2fsprogs
TEST_CACHE ?= $(or $(VOLAGENT_TEST_CACHE),/var/cache/volagent-test)
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' agent/volagent/__init__.py)
BUNDLE := dist/volagent-$(VERSION)-bundle.tar.gz

.PHONY: install host-deps testbed-deps run test unit integration lint bench dist ami clean vm-deps vm-image test-vm bench-vm

# Two stamps: `make run` needs the package and its dependencies alone (.runtime); the tests,
# lint and the builds add the test tools (.installed: moto, mypy, pytest, ...).
install: $(VENV)/.installed

$(VENV)/.runtime: pyproject.toml
	@$(MAKE) --no-print-directory host-deps
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed: $(VENV)/.runtime
	$(PY) -m pip install -q -e '.[test]'
	touch $@

host-deps:
	@scripts/apt-ensure $(RUNTIME_DEBS)

testbed-deps:
	@scripts/apt-ensure $(TESTBED_DEBS)

run: $(VENV)/.runtime
	$(VENV)/bin/volagent --config $(CONFIG) run

# Branch coverage of the volagent package, in-process and in the agent processes the tests
# start, printed after the run: the total and the files not fully covered.
COVERAGE := --cov=volagent --cov-branch --cov-report=term:skip-covered

test: install testbed-deps
	$(PY) -m pytest -q -p no:cacheprovider $(COVERAGE) --ignore=tests/vm tests

unit: install testbed-deps
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

integration: install testbed-deps
	$(PY) -m pytest -q -p no:cacheprovider tests/integration

lint: install
	$(VENV)/bin/ruff check agent tests bench scripts/cli-docs
	$(VENV)/bin/ruff format --check agent tests bench scripts/cli-docs
	$(VENV)/bin/mypy

bench: install testbed-deps
	$(PY) -m bench

# The wheel and the offline release bundle in dist/ (wheels for every target host's Python).
dist: install
	scripts/build-dist --python $(PY) --out dist

vm-deps:
	@scripts/apt-ensure $(VM_DEBS)

# The test machine's disk image (cached by its inputs under TEST_CACHE); prints its directory.
vm-image: dist vm-deps
	scripts/build-vm-image $(TEST_CACHE) $(BUNDLE)

# The scenarios on a real Debian host in QEMU: systemd, the kernel's NFS client, reboots, hangs.
test-vm: dist vm-deps
	image=$$(scripts/build-vm-image $(TEST_CACHE) $(BUNDLE)) && \
	VOLAGENT_VM_IMAGE=$$image VOLAGENT_TEST_CACHE=$(TEST_CACHE) \
		$(PY) -m pytest -q -p no:cacheprovider --durations=0 -m vm $(PYTEST_ARGS) tests/vm

# The benchmarks on the test machine (bench/vm_bench.py): a guarded docker run against Docker
# alone over NFS with a netem delay, and how soon a real hang is noticed; ratios in one run.
bench-vm: dist vm-deps
	image=$$(scripts/build-vm-image $(TEST_CACHE) $(BUNDLE)) && \
	VOLAGENT_VM_IMAGE=$$image VOLAGENT_TEST_CACHE=$(TEST_CACHE) $(PY) -m bench vm_bench

# An AMI with volagent baked in, for users with AWS credentials: make ami PACKER_VARS='-var region=...'
ami: dist
	@scripts/apt-ensure packer
	scripts/build-ami $(PACKER_VARS)

clean:
	rm -rf $(VENV) dist build .mypy_cache .ruff_cache .coverage .coverage.*
