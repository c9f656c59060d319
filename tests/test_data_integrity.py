"""A data build is reused only while its files hash as its manifest says, and a resumed run trains
on the very data it started with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import DEMO_DATA, write_recipe

from qlora4080 import load_recipe, train
from qlora4080.data.pipeline import build_data
from qlora4080.errors import QloraError
from qlora4080.toml_io import dumps_toml


def _recipe(tmp_path: Path) -> Path:
    recipe = {"model": {"name": "builtin:smollm2-135m-instruct"},
              "data": {"sources": [{"path": str(DEMO_DATA / "train.jsonl"), "name": "cards"}],
                       "build_dir": str(tmp_path / "builds"), "valid_min": 2},
              "training": {"seed": 7}}
    path = tmp_path / "mix.toml"
    path.write_text(dumps_toml(recipe))
    return path


def test_a_build_whose_files_changed_is_built_again(tmp_path: Path) -> None:
    first = build_data(load_recipe(_recipe(tmp_path)))
    whole = first.train_file.read_bytes()
    first.train_file.write_bytes(whole[: len(whole) // 3])  # cut short after the build
    again = build_data(load_recipe(_recipe(tmp_path)))
    assert not again.reused and again.train_file.read_bytes() == whole
    assert again.manifest["counts"] == first.manifest["counts"]


@pytest.mark.parametrize("damage", ["{not json", '{"pools": 3}', "[]"])
def test_a_damaged_manifest_is_built_again_not_a_traceback(tmp_path: Path, damage: str) -> None:
    first = build_data(load_recipe(_recipe(tmp_path)))
    (first.folder / "manifest.json").write_text(damage)
    again = build_data(load_recipe(_recipe(tmp_path)))
    assert not again.reused and again.manifest["counts"] == first.manifest["counts"]
    assert build_data(load_recipe(_recipe(tmp_path))).reused  # whole again: reused next time


def test_resume_refuses_changed_training_data(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "train.jsonl"
    shutil.copy(DEMO_DATA / "train.jsonl", data)
    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), data={"train": str(data)},
                                      training={"max_steps": 2, "save_steps": 1}))
    first = train(recipe, run_name="d", live=False)
    shutil.rmtree(first.checkpoint_dir / "checkpoint-2")  # as if stopped after step 1
    lines = data.read_text().splitlines()
    data.write_text("\n".join(lines[len(lines) // 2:]) + "\n")
    with pytest.raises(QloraError, match="the training data changed since run 'd' started"):
        train(recipe, run_name="d", resume=True, live=False)
    data.write_text("\n".join(lines) + "\n")
    resumed = train(recipe, run_name="d", resume=True, live=False)
    assert resumed.summary["steps"] == 2
    assert json.loads((first.checkpoint_dir / ".qlora4080-data.json").read_text())["train"] == str(data.resolve())
