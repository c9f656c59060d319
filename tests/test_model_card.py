"""The model card: hub front matter, recipe, data, results, eval table and loading code, from typed inputs or a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from conftest import DEMO_DATA

from qlora4080.checkpoint import META_FILE, RECIPE_SNAPSHOT, CheckpointMeta
from qlora4080.model_card import CARD_MARKER, CardInputs, DataLine, build_model_card, card_for_checkpoint
from qlora4080.toml_io import dumps_toml, loads_toml

RECIPE = {"model": {"name": "builtin:smollm2-135m-instruct", "max_seq_len": 256},
          "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
          "data": {"train": "/data/train.jsonl"},
          "training": {"method": "sft", "learning_rate": 2e-4, "scheduler": "cosine", "batch_size": 2, "grad_accum": 8, "seed": 42}}
SUMMARY = {"steps": 30, "first_loss": 2.5, "last_loss": 0.75, "eval_loss": 0.5, "eval_perplexity": 1.6487,
           "dataset_tokens": 12000, "dataset_trained_tokens": 4000, "wall_seconds": 120.0}


def _front_matter(card: str) -> dict[str, object]:
    assert card.startswith("---\n")
    data = yaml.safe_load(card.split("---\n")[1])
    assert isinstance(data, dict)
    return data


def _inputs(**changes: object) -> CardInputs:
    fields: dict[str, object] = {
        "run_name": "demo", "base_model": "builtin:smollm2-135m-instruct", "method": "sft", "recipe_toml": dumps_toml(RECIPE),
        "load_from": "me/demo-adapter", "hub_base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0",
        "data": [DataLine("train", "train.jsonl", 320)], "summary": SUMMARY,
    }
    return CardInputs(**{**fields, **changes})  # type: ignore[arg-type]


def _code_block(card: str, language: str) -> str:
    return card.split(f"```{language}\n")[1].split("```")[0]


def test_front_matter_is_what_the_hub_reads() -> None:
    card = build_model_card(_inputs(load_in_4bit=True))
    assert _front_matter(card) == {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "library_name": "peft",
                                   "pipeline_tag": "text-generation", "license": "apache-2.0",
                                   "tags": ["qlora4080", "lora", "qlora", "sft", "trl"]}
    assert CARD_MARKER in card


def test_a_local_base_gets_no_base_model_or_license_key() -> None:
    card = build_model_card(_inputs(base_model="/models/my-base", hub_base_model=None, license=None, method="dpo"))
    front = _front_matter(card)
    assert "base_model" not in front and "license" not in front and "dpo" in front["tags"]  # type: ignore[operator]
    assert 'AutoModelForCausalLM.from_pretrained("/models/my-base")' in card


def test_body_has_the_recipe_data_results_and_loading_code() -> None:
    card = build_model_card(_inputs())
    assert loads_toml(_code_block(card, "toml")) == RECIPE  # the recipe, whole and valid
    assert "| train | `train.jsonl` | 320 |" in card
    assert "12,000 tokens, 4,000 of them trained" in card
    assert "| final training loss | 0.75 |" in card and "| eval perplexity (assistant tokens) | 1.649 |" in card
    assert "r=16, alpha=32, dropout=0.05, modules: all-linear" in card
    code = _code_block(card, "python")
    assert 'AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")' in code
    assert 'PeftModel.from_pretrained(base, "me/demo-adapter")' in code
    compile(code, "card", "exec")  # the snippet is valid Python
    assert "hf download me/demo-adapter --local-dir demo-adapter\nqlora4080 chat demo-adapter" in card
    assert "Q4_1 GGUF" in card  # the built-in base is a de-quantized copy: the card says so


def test_an_early_stopped_run_says_which_step_its_weights_are_from() -> None:
    """The adapter of an early-stopped run is the best evaluation's, not the last step's: the card must not imply otherwise."""
    stopped = {**SUMMARY, "steps": 14, "stopped_early": True, "stopped_at_step": 14,
               "best_checkpoint": {"step": 10, "eval_loss": 0.4769}}
    card = build_model_card(_inputs(summary=stopped))
    assert "| stopped early | at step 14: the validation loss had stopped improving |" in card
    assert "| weights from | step 10, the best evaluation (eval loss 0.4769) |" in card
    plain = build_model_card(_inputs())
    assert "stopped early" not in plain and "weights from" not in plain


def test_merged_card_loads_the_model_directly() -> None:
    card = build_model_card(_inputs(merged=True, load_from="me/demo-merged"))
    assert _front_matter(card)["library_name"] == "transformers" and "merged" in card.split("---")[1]
    assert 'model = AutoModelForCausalLM.from_pretrained("me/demo-merged")' in card and "PeftModel" not in card


def test_eval_table_goes_under_the_card_title() -> None:
    eval_md = "# Evaluation\n\nData: `v.jsonl`\n\n| metric | base | adapter |\n|---|---|---|\n| usability rate | 40.0% | 100.0% |\n"
    card = build_model_card(_inputs(eval_markdown=eval_md))
    section = card.split("## Evaluation\n")[1].split("\n## ")[0]
    assert "| usability rate | 40.0% | 100.0% |" in section and "# Evaluation" not in section
    assert card.count("\n# ") == 1  # one title: the run's


def _checkpoint(tmp_path: Path, recipe: dict[str, object]) -> Path:
    """A checkpoint folder's metadata and snapshot, as `train` writes them (no weights: the card reads none)."""
    folder = tmp_path / "checkpoints" / "run1"
    folder.mkdir(parents=True)
    meta = CheckpointMeta(base_model="someone/base-model", summary=SUMMARY,
                          versions={"qlora4080": "0.1.0", "python": "3.11", "trl": "1.15.0"})
    (folder / META_FILE).write_text(meta.to_json())
    (folder / RECIPE_SNAPSHOT).write_text(dumps_toml(recipe))
    return folder


def test_checkpoint_card_counts_the_data_files_and_includes_a_later_eval(tmp_path: Path) -> None:
    recipe = {**RECIPE, "model": {"name": "someone/base-model"},
              "data": {"train": str(DEMO_DATA / "train.jsonl"), "validation": str(DEMO_DATA / "validation.jsonl")},
              "output": {"runs_dir": str(tmp_path / "runs")}}
    folder = _checkpoint(tmp_path, recipe)
    lines = [line for line in (DEMO_DATA / "train.jsonl").read_text().splitlines() if line.strip()]
    card = card_for_checkpoint(folder)
    assert f"| train | `train.jsonl` | {len(lines)} |" in card
    assert _front_matter(card)["base_model"] == "someone/base-model" and "## Evaluation" not in card
    assert "versions | qlora4080 0.1.0, trl 1.15.0 |" in card  # python left out
    (tmp_path / "runs" / "run1").mkdir(parents=True)
    (tmp_path / "runs" / "run1" / "eval.md").write_text("# Evaluation\n\n| metric | adapter |\n|---|---|\n| perplexity | 1.5 |\n")
    assert "| perplexity | 1.5 |" in card_for_checkpoint(folder, load_from="me/run1")


def test_a_damaged_recipe_snapshot_leaves_the_recipe_out_of_the_card(tmp_path: Path) -> None:
    """export --push-to-hub writes the card anew: a snapshot that is not text (or not TOML) must not stop the upload."""
    folder = _checkpoint(tmp_path, RECIPE)
    for damaged in (b"\xff\xfe\x00 not text", b"[model\nname = "):
        (folder / RECIPE_SNAPSHOT).write_bytes(damaged)
        card = card_for_checkpoint(folder, load_from="me/run1")
        assert CARD_MARKER in card and "## Recipe" not in card and "## Results" in card
        assert _front_matter(card)["base_model"] == "someone/base-model"


def test_checkpoint_card_shows_each_source_of_a_data_build(tmp_path: Path) -> None:
    from qlora4080.data.pipeline import build_data
    from qlora4080.recipe import load_recipe

    recipe_path = tmp_path / "mix.toml"
    recipe_path.write_text(dumps_toml({
        "model": {"name": "someone/base-model"},
        "data": {"build_dir": str(tmp_path / "builds"), "valid_min": 4, "valid_ratio": 0.1,
                 "sources": [{"path": str(DEMO_DATA / "train.jsonl"), "name": "cards", "weight": 2},
                             {"path": str(DEMO_DATA / "validation.jsonl"), "name": "more"}]}}))
    recipe = load_recipe(recipe_path)
    build = build_data(recipe)
    folder = _checkpoint(tmp_path, loads_toml(recipe.to_toml()))
    card = card_for_checkpoint(folder)
    counts = build.manifest["counts"]
    assert f"{counts['train']} training and {counts['validation']} validation records" in card
    for pool in build.pools:
        assert f"| {pool.name} | `{'train' if pool.name == 'cards' else 'validation'}.jsonl` | {pool.in_mix} |" in card
    assert str(DEMO_DATA) not in card.split("```toml")[0]  # the table names files, not this machine's folders


def test_training_replaces_peft_placeholder_with_the_card(tiny_checkpoint: Path) -> None:
    card = (tiny_checkpoint / "README.md").read_text()
    assert CARD_MARKER in card and "[More Information Needed]" not in card
    meta = json.loads((tiny_checkpoint / META_FILE).read_text())
    assert f"| final training loss | {meta['summary']['last_loss']:.4g} |" in card
    assert f'PeftModel.from_pretrained(base, "{tiny_checkpoint}")' in card
