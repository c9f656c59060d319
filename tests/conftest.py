"""Fixtures: every test runs in its own temp folder; models are local (no network).

The tiny model is a 2-layer Llama with random weights built from a config,
paired with SmolLM2's real tokenizer and chat template, so training and
chat run through the real code paths in seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO_RECIPE = REPO / "recipes" / "smollm2_135m_demo.toml"
DEMO_DATA = REPO / "recipes" / "data" / "json_cards"
CLI = [sys.executable, "-m", "qlora4080"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests must never reach for the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """checkpoints/ and runs/ land in a temp folder, never in the repo."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from qlora4080.builtin_models import resolve_builtin

    return resolve_builtin("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smol_tokenizer(smollm2_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smol_tokenizer) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smol_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=smol_tokenizer.bos_token_id,
        eos_token_id=smol_tokenizer.eos_token_id,
        pad_token_id=smol_tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path


def write_recipe(folder: Path, model_name: str, **sections: dict) -> Path:
    """A recipe file for the tiny model and the demo data; `sections` override keys per table."""
    from qlora4080.recipe import dumps_toml

    data = {
        "model": {"name": model_name, "max_seq_len": 128, "load_in_4bit": False},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "data": {"train": str(DEMO_DATA / "train.jsonl"), "validation": str(DEMO_DATA / "validation.jsonl")},
        "training": {"max_steps": 6, "batch_size": 4, "grad_accum": 1, "learning_rate": 5e-3, "logging_steps": 1,
                     "warmup_ratio": 0.0, "scheduler": "constant", "save_steps": 1000},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
        data[name] = {k: v for k, v in data[name].items() if v is not None}  # None removes a key
    path = folder / "recipe.toml"
    path.write_text(dumps_toml(data), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained tiny adapter (3 steps) for chat/eval/generate/export tests."""
    from qlora4080 import load_recipe, train

    work = tmp_path_factory.mktemp("tiny-run")
    recipe = load_recipe(write_recipe(work, str(tiny_model_dir), training={"max_steps": 3},
                                      output={"checkpoints_dir": str(work / "checkpoints"), "runs_dir": str(work / "runs")}))
    return train(recipe, run_name="tiny", live=False).checkpoint_dir


GO_PROGRAM = Path(__file__).parent / "go" / "render_template.go"


@pytest.fixture(scope="session")
def go_renderer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go program, built once: CI installs Go (.ci/run), so only a machine without it may skip."""
    go = shutil.which("go")
    if go is None:
        if os.environ.get("CI"):
            pytest.fail("Go is not installed, but CI must prove the Modelfile with it (.ci/run installs golang-go)")
        pytest.skip("Go is not installed (apt-get install golang-go): the Modelfile cannot be rendered by Go here")
    binary = tmp_path_factory.mktemp("go") / "render_template"
    env = {**os.environ, "GOCACHE": os.environ.get("GOCACHE", str(Path.home() / ".cache" / "go-build"))}
    subprocess.run([go, "build", "-o", str(binary), str(GO_PROGRAM)], check=True, env=env, timeout=300,
                   cwd=GO_PROGRAM.parent)
    return binary
