# Two commands do all set-up on a fresh machine: `make search` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup system-deps search test clean-venv

setup: system-deps $(STAMP)

# Debian packages the project uses: the embedded dataset, the Android client and `ip` (the tests' loopback-only
# network namespace for Ray). Installed only when running as root and missing; otherwise a hint is printed.
system-deps:
	@if [ -d "$(FMNIST)" ] && command -v adb >/dev/null 2>&1 && command -v ip >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian packages: dataset-fashion-mnist adb iproute2"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist adb iproute2; \
	else \
		echo "note: install the Debian packages 'dataset-fashion-mnist', 'adb' and 'iproute2' (needs root) for the embedded dataset, phones and the Ray tests"; \
	fi

$(STAMP): pyproject.toml
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -e ".[dev]"
	@touch $(STAMP)

search: setup
	$(BIN)/python -m nas.search +experiment=quickstart

# Ray listens on every interface of the machine: as root, the suite runs in a private network namespace where the
# only interface is the loopback, so a test cluster never talks to the network. Elsewhere the Ray tests are skipped.
test: setup
	@if [ "$$(id -u)" = "0" ] && unshare -n true 2>/dev/null; then \
		unshare -n sh -c 'ip link set lo up && exec $(BIN)/python -m pytest -q'; \
	else \
		$(BIN)/python -m pytest -q; \
	fi

clean-venv:
	rm -rf $(VENV)
