# Two commands do all set-up on a fresh machine: `make search` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup system-deps search test bench clean-venv

setup: system-deps $(STAMP)

# Debian packages the project uses: the embedded dataset and the Android client.
# Installed only when running as root and missing; otherwise a hint is printed.
system-deps:
	@if [ -d "$(FMNIST)" ] && command -v adb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian packages: dataset-fashion-mnist adb"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist adb; \
	else \
		echo "note: install the Debian packages 'dataset-fashion-mnist' and 'adb' (needs root) for the embedded dataset and phones"; \
	fi

$(STAMP): pyproject.toml
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -e ".[dev]"
	@touch $(STAMP)

search: setup
	$(BIN)/python -m nas.search +experiment=quickstart

test: setup
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
