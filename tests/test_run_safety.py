"""Nothing the user had is lost: run names, --overwrite, one process per run, honest resume, safe saves."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest
from conftest import CLI, write_recipe

from qlora4080 import load_recipe, train
from qlora4080.errors import QloraError
from qlora4080.export import check_out_dir
from qlora4080.runlock import holding
from qlora4080.training.resume_check import check_resume
from qlora4080.training.run import RECIPE_SNAPSHOT, resume_command
from qlora4080.training.rundirs import RUN_MARKER
from qlora4080.training.saving import save_adapter


def _user_folder(root: Path) -> dict[Path, str]:
    """A working folder as a user has it: recipes, notes, earlier checkpoints."""
    files = {root / "notes.txt": "my notes", root / "recipes" / "mine.toml": "# mine",
             root / "checkpoints" / "old-run" / "adapter_model.safetensors": "weights"}
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return files


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("name", ["..", ".", "../x", "/tmp/x", "a/b", "-x", ""])
def test_unsafe_run_names_are_refused_and_nothing_is_removed(tmp_path: Path, tiny_model_dir: Path, name: str) -> None:
    files = _user_folder(tmp_path)
    recipe = write_recipe(tmp_path, str(tiny_model_dir))
    done = _run("train", str(recipe), "--run-name", name, "--overwrite", "--set", "training.max_steps=1", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "plain name" in done.stdout + done.stderr
    assert all(path.read_text() == text for path, text in files.items())


def test_overwrite_leaves_a_folder_it_did_not_write(tmp_path: Path, tiny_model_dir: Path) -> None:
    mine = tmp_path / "checkpoints" / "keep" / "thesis.tex"
    mine.parent.mkdir(parents=True)
    mine.write_text("years of work")
    recipe = write_recipe(tmp_path, str(tiny_model_dir))
    done = _run("train", str(recipe), "--run-name", "keep", "--overwrite", cwd=tmp_path)
    assert done.returncode == 2 and "not written by qlora4080" in done.stdout + done.stderr
    assert mine.read_text() == "years of work"


def test_overwrite_never_removes_the_run_s_own_inputs(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "checkpoints" / "r1"
    run.mkdir(parents=True)
    (run / RUN_MARKER).write_text("r1\n")
    recipe = write_recipe(run, str(tiny_model_dir))  # the recipe lives inside the run folder
    with pytest.raises(QloraError, match="holds this run's own input"):
        train(load_recipe(recipe), run_name="r1", overwrite=True, live=False)
    assert recipe.is_file()


def test_a_second_process_on_the_same_run_fails_at_once_naming_the_holder(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = write_recipe(tmp_path, str(tiny_model_dir))
    with holding(tmp_path / "checkpoints" / "busy", "run 'busy'"):
        done = _run("train", str(recipe), "--run-name", "busy", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert "in use by another qlora4080 process" in out and "pid" in out
    assert not (tmp_path / "runs" / "busy" / "train.log").exists()


def test_the_lock_is_released_when_the_holder_ends(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints" / "x"
    with holding(folder, "run 'x'"), pytest.raises(QloraError, match="in use"), holding(folder, "run 'x'"):
        pass
    with holding(folder, "run 'x'"):  # free again
        pass


def test_resume_refuses_shape_changes_and_keeps_the_snapshot(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe_path = write_recipe(tmp_path, str(tiny_model_dir), training={"max_steps": 2, "save_steps": 1})
    first = train(load_recipe(recipe_path), run_name="r", live=False)
    snapshot = (first.checkpoint_dir / RECIPE_SNAPSHOT).read_text()
    with pytest.raises(QloraError) as refused:
        train(load_recipe(recipe_path, ["lora.r=4", "training.max_steps=5"]), run_name="r", resume=True, live=False)
    message = str(refused.value)
    assert "lora.r: run has 8, now 4" in message and "training.max_steps: run has 2, now 5" in message
    assert (first.checkpoint_dir / RECIPE_SNAPSHOT).read_text() == snapshot


def test_resume_applies_and_records_safe_changes(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe_path = write_recipe(tmp_path, str(tiny_model_dir))
    snapshot = tmp_path / RECIPE_SNAPSHOT
    snapshot.write_text(load_recipe(recipe_path).to_toml())
    notes = check_resume(load_recipe(recipe_path, ["training.logging_steps=3", "output.runs_dir=elsewhere"]), snapshot, "r")
    assert notes == ["resume: training.logging_steps changed from 1 to 3"]


def test_a_run_from_before_a_key_existed_resumes_when_the_key_keeps_its_default(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe_path = write_recipe(tmp_path, str(tiny_model_dir))
    snapshot = tmp_path / RECIPE_SNAPSHOT
    newer_keys = ("early_stopping_patience", "early_stopping_threshold", "sft_weight", "report_to")
    lines = load_recipe(recipe_path).to_toml().splitlines()
    older = [line for line in lines if not line.startswith(newer_keys)]
    assert len(lines) - len(older) == len(newer_keys)  # the snapshot really lacks them
    snapshot.write_text("\n".join(older) + "\n")
    assert check_resume(load_recipe(recipe_path), snapshot, "r") == []
    with pytest.raises(QloraError, match="training.early_stopping_threshold: run has 0.0, now 0.5"):
        check_resume(load_recipe(recipe_path, ["training.early_stopping_threshold=0.5"]), snapshot, "r")


def test_printed_resume_command_repeats_the_overrides(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe_path = write_recipe(tmp_path, str(tiny_model_dir))
    recipe = load_recipe(recipe_path, ["training.max_steps=7", "output.runs_dir=my runs"])
    command = resume_command(recipe, type("Dirs", (), {"name": "r"})())
    assert "--set training.max_steps=7" in command and "--set 'output.runs_dir=my runs'" in command
    assert command.endswith("--resume --run-name r")


class _Saver:
    """Writes one file per save, and fails like a full disk inside `full`."""

    def __init__(self, name: str, full: Path):
        self.name, self.full = name, full

    def save_pretrained(self, folder: Path) -> None:
        if Path(folder).resolve().is_relative_to(self.full.resolve()):
            raise OSError(errno.ENOSPC, "No space left on device", str(folder))
        (Path(folder) / self.name).write_text("saved")


def test_a_failed_final_save_keeps_what_was_there_and_rescues_the_adapter(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints" / "run"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_text("earlier good adapter")
    with pytest.raises(QloraError) as failed:
        save_adapter(_Saver("adapter_model.safetensors", folder), _Saver("tokenizer.json", folder), folder,
                     {"qlora4080.json": "{}"}, last_good=folder / "checkpoint-100")
    message = str(failed.value)
    assert failed.value.exit_code == 4 and "No space left on device" in message and "checkpoint-100" in message
    rescue = Path(message.split("saved instead to ")[1].split(" ")[0])
    assert (rescue / "adapter_model.safetensors").read_text() == "saved" and (rescue / "qlora4080.json").is_file()
    assert (folder / "adapter_model.safetensors").read_text() == "earlier good adapter"
    assert [p.name for p in folder.iterdir()] == ["adapter_model.safetensors"]  # no half-written staging left


def test_export_never_writes_over_its_own_checkpoint(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoints" / "x"
    checkpoint.mkdir(parents=True)
    (checkpoint / "adapter_model.safetensors").write_text("adapter")
    for target in (checkpoint, checkpoint / "merged", checkpoint.parent):
        with pytest.raises(QloraError, match="checkpoint being exported"):
            check_out_dir(target, overwrite=True, source=checkpoint)
    assert (checkpoint / "adapter_model.safetensors").read_text() == "adapter"
    stray = tmp_path / "notes"
    stray.mkdir()
    (stray / "a.txt").write_text("keep")
    with pytest.raises(QloraError, match="does not look like an earlier export"):
        check_out_dir(stray, overwrite=True, source=checkpoint)
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(QloraError, match="is a file"):
        check_out_dir(afile, overwrite=True, source=checkpoint)
