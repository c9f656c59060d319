"""A run owns its folders by its marker alone, locks every folder it writes by the real path, and
`--overwrite` replaces the old run only once the new one has saved something."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_recipe
from transformers import TrainerCallback

from qlora4080 import load_recipe, train
from qlora4080.errors import QloraError
from qlora4080.runlock import holding
from qlora4080.training.rundirs import RUN_MARKER


def _project_folder(root: Path, familiar: str) -> dict[Path, str]:
    """A user's project folder that happens to hold a file with a name a run also writes."""
    files = {root / familiar: "mine, not a run's", root / "notes.md": "notes", root / "results" / "table.csv": "1,2"}
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return files


@pytest.mark.parametrize("familiar", ["recipe.toml", "train.log", "metrics.jsonl", "summary.json", "qlora4080.json"])
def test_a_familiar_file_name_is_no_proof_that_a_folder_is_a_run(tmp_path: Path, tiny_model_dir: Path, familiar: str) -> None:
    files = _project_folder(tmp_path / "proj", familiar)
    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir)), ["output.checkpoints_dir=."])
    with pytest.raises(QloraError, match=f"not written by qlora4080 \\(it has no {RUN_MARKER} marker\\)"):
        train(recipe, run_name="proj", overwrite=True, live=False)
    assert all(path.read_text() == text for path, text in files.items())
    assert sorted(p.name for p in (tmp_path / "proj").iterdir()) == sorted([familiar, "notes.md", "results"])


def test_one_folder_for_checkpoints_and_logs_is_refused_and_no_run_becomes_the_logs_folder(tmp_path: Path,
                                                                                           tiny_model_dir: Path) -> None:
    """checkpoints_dir = runs_dir made a run's two folders one: --overwrite moved the old run aside twice and lost it."""
    path = write_recipe(tmp_path, str(tiny_model_dir))
    with pytest.raises(QloraError, match="are one folder"):
        load_recipe(path, ["output.checkpoints_dir=out", "output.runs_dir=./out/"])
    earlier = tmp_path / "runs" / "old" / "train.log"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("another run's log")
    recipe = load_recipe(path, ["output.checkpoints_dir=."])  # runs/ inside: fine, but not a run named "runs"
    with pytest.raises(QloraError, match=r"which is \(or holds\) the output folder runs of every run"):
        train(recipe, run_name="runs", overwrite=True, live=False)
    assert earlier.read_text() == "another run's log" and not (tmp_path / "runs" / RUN_MARKER).exists()


def test_overwrite_keeps_the_adapter_the_recipe_continues_from(tmp_path: Path, tiny_model_dir: Path) -> None:
    sft = tmp_path / "checkpoints" / "sft1"
    sft.mkdir(parents=True)
    (sft / RUN_MARKER).write_text("sft1\n")
    (sft / "adapter_model.safetensors").write_text("the SFT adapter")
    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), model={"adapter": "checkpoints/sft1"}))
    with pytest.raises(QloraError, match="holds this run's own input") as refused:
        train(recipe, run_name="sft1", overwrite=True, live=False)
    assert "--overwrite" not in (refused.value.hint or "")
    assert (sft / "adapter_model.safetensors").read_text() == "the SFT adapter"


class _FailsAtStart(TrainerCallback):
    """A run that fails after its folders are made and before anything is saved (like a bad seed or a crash)."""

    def on_train_begin(self, args, state, control, **kwargs):
        raise RuntimeError("failed before the first step")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_puts_the_old_run_back_when_the_new_one_fails_before_saving(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), training={"max_steps": 1}))
    first = train(recipe, run_name="r", live=False)
    before = {"checkpoint": _files(first.checkpoint_dir), "logs": _files(first.run_dir)}
    with pytest.raises(RuntimeError, match="before the first step"):
        train(recipe, run_name="r", overwrite=True, live=False, callbacks=[_FailsAtStart()])
    assert {"checkpoint": _files(first.checkpoint_dir), "logs": _files(first.run_dir)} == before
    # A run killed before it could settle left the old folders aside: the next run of the name puts them back.
    for folder in (first.checkpoint_dir, first.run_dir):
        folder.rename(folder.parent / ".r.replaced-999999")
        folder.mkdir()
        (folder / RUN_MARKER).write_text("r\n")
    with pytest.raises(RuntimeError, match="before the first step"):
        train(recipe, run_name="r", overwrite=True, live=False, callbacks=[_FailsAtStart()])
    assert {"checkpoint": _files(first.checkpoint_dir), "logs": _files(first.run_dir)} == before
    assert not list(tmp_path.rglob(".r.replaced-*"))
    # A new run that saves replaces the old one, and nothing is left aside.
    second = train(load_recipe(write_recipe(tmp_path, str(tiny_model_dir), training={"max_steps": 1, "seed": 7})),
                   run_name="r", overwrite=True, live=False)
    assert _files(second.checkpoint_dir)["adapter_model.safetensors"] != before["checkpoint"]["adapter_model.safetensors"]
    assert not list(tmp_path.rglob(".r.replaced-*"))


def test_the_run_lock_covers_the_logs_folder_whatever_checkpoints_dir_is(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir)), ["output.checkpoints_dir=elsewhere"])
    (tmp_path / "runs" / "k").mkdir(parents=True)
    with holding(tmp_path / "runs" / "k", "run 'k'"), pytest.raises(QloraError, match="in use by another"):
        train(recipe, run_name="k", overwrite=True, live=False)
    assert not (tmp_path / "elsewhere" / "k").exists()


def _checkpoint(run: Path, step: int) -> Path:
    folder = run / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (run / RUN_MARKER).write_text(f"{run.name}\n")
    return folder


def test_the_run_lock_is_keyed_by_the_real_path(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir)))
    _checkpoint(tmp_path / "checkpoints" / "k3", 1)
    (tmp_path / "linkk3").symlink_to(tmp_path / "checkpoints" / "k3")
    with holding(Path("checkpoints/k3"), "run 'k3'"), pytest.raises(QloraError, match="in use by another"):
        train(recipe, resume_from=Path("linkk3/checkpoint-1"), live=False)
    assert not (tmp_path / "runs" / "linkk3").exists()


def test_resume_from_refuses_the_name_of_another_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir)))
    _checkpoint(tmp_path / "checkpoints" / "k2", 2)
    with pytest.raises(QloraError, match="continues run 'k2', not 'brandnew'"):
        train(recipe, resume_from=Path("checkpoints/k2/checkpoint-2"), run_name="brandnew", live=False)
    assert not (tmp_path / "checkpoints" / "brandnew").exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "k2").iterdir()) == [RUN_MARKER, "checkpoint-2"]
