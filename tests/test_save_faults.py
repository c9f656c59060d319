"""Saves under real faults: a file-size limit (EFBIG, as a full disk fails a write), a small full
filesystem, kill -9 leftovers, damaged checkpoint state, SIGTERM, and resuming a finished run."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import CLI, write_recipe
from safetensors.torch import load_file

from qlora4080 import load_recipe, train
from qlora4080.errors import QloraError

ONE_MB = 1 << 20  # the tiny adapter (~70 kB) and optimizer fit; SmolLM2's tokenizer.json (3.4 MB) does not


def _train_with_file_limit(recipe: Path, limit: int, *args: str) -> subprocess.CompletedProcess:
    """`qlora4080 train` in a process whose files cannot grow past `limit` bytes (writes fail with EFBIG)."""
    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([*CLI, "train", str(recipe), *args], capture_output=True, text=True, timeout=300,
                          preexec_fn=limited, env={**os.environ, "COLUMNS": "400"})


def _named_folder(text: str, after: str) -> Path:
    return Path(text.split(after, 1)[1].split()[0].rstrip(";,"))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".saving") or p.name.startswith("checkpoint-"))


def test_a_failed_checkpoint_save_rescues_the_weights_and_leaves_no_half_checkpoint(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = write_recipe(tmp_path, str(tiny_model_dir), training={"max_steps": 3, "save_steps": 2})
    done = _train_with_file_limit(recipe, ONE_MB, "--run-name", "full")
    out = done.stdout + done.stderr
    assert done.returncode == 4, out
    assert "Traceback" not in out and "could not save checkpoint-2" in out and "File too large" in out
    rescue = _named_folder(" ".join(out.split()), "alone was saved to ")
    weights = load_file(str(rescue / "adapter_model.safetensors"))
    assert weights and all("lora_" in key for key in weights)
    assert _leftovers(tmp_path / "checkpoints" / "full") == []  # no checkpoint-2 half written, no staging folder
    shutil.rmtree(rescue.parent)




@pytest.fixture
def small_filesystem(tmp_path: Path):
    """mount(megabytes) -> a tmpfs that small: the tiny model's checkpoint takes 3.7 MB. Needs the right to mount."""
    mounted: list[Path] = []

    def mount(megabytes: int) -> Path:
        folder = tmp_path / f"small-{len(mounted)}"
        folder.mkdir()
        command = ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)]
        if subprocess.run(command, capture_output=True).returncode:
            pytest.skip("cannot mount a small filesystem here (needs root)")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_rescues_a_resumable_checkpoint(tmp_path: Path, tiny_model_dir: Path, small_filesystem) -> None:
    disk = small_filesystem(3)
    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), training={"max_steps": 3, "save_steps": 2}),
                         [f"output.checkpoints_dir={disk}"])
    with pytest.raises(QloraError) as failed:
        train(recipe, run_name="disk", live=False)
    message = " ".join(str(failed.value).split())
    assert failed.value.exit_code == 4 and "No space left on device" in message
    rescued = _named_folder(message, "saved instead to ")
    assert rescued.parent.is_relative_to(tempfile.gettempdir()) and rescued.name == "checkpoint-2"
    assert json.loads((rescued / "trainer_state.json").read_text())["global_step"] == 2
    assert "--resume --run-name disk" in message
    assert _leftovers(disk / "disk") == []
    shutil.rmtree(rescued.parent)


def test_a_disk_filling_at_the_final_save_rescues_the_whole_adapter(tmp_path: Path, tiny_model_dir: Path,
                                                                    small_filesystem) -> None:
    disk = small_filesystem(5)  # room for the last trainer checkpoint (3.7 MB), not for the adapter folder after it
    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), training={"max_steps": 1}),
                         [f"output.checkpoints_dir={disk}"])
    with pytest.raises(QloraError) as failed:
        train(recipe, run_name="last", live=False)
    message = " ".join(str(failed.value).split())
    assert failed.value.exit_code == 4 and "could not save the adapter" in message
    rescue = _named_folder(message, "saved instead to ")
    assert load_file(str(rescue / "adapter_model.safetensors"))
    assert json.loads((rescue / "qlora4080.json").read_text())["base_model"] == str(tiny_model_dir)
    assert (rescue / "tokenizer.json").is_file() and "last good checkpoint is" in message
    assert _leftovers(disk / "last") == ["checkpoint-1"]
    shutil.rmtree(rescue)


def test_resume_never_trains_past_the_last_step(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), training={"max_steps": 2, "save_steps": 2}))
    first = train(recipe, run_name="done", live=False)
    adapter = (first.checkpoint_dir / "adapter_model.safetensors").read_bytes()
    with pytest.raises(QloraError, match="already finished: checkpoint-2 is at step 2 of 2, so there is nothing to resume"):
        train(recipe, run_name="done", resume=True, live=False)
    assert (first.checkpoint_dir / "adapter_model.safetensors").read_bytes() == adapter
    assert sorted(p.name for p in first.checkpoint_dir.glob("checkpoint-*")) == ["checkpoint-2"]


def test_resume_passes_over_a_damaged_checkpoint_and_clears_kill_leftovers(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), training={"max_steps": 3, "save_steps": 1}))
    first = train(recipe, run_name="cut", live=False)
    state = first.checkpoint_dir / "checkpoint-3" / "trainer_state.json"
    state.write_text(state.read_text()[:40])  # what a kill in the middle of writing it leaves
    with pytest.raises(QloraError, match="trainer_state.json is damaged"):
        train(recipe, resume_from=state.parent, live=False)
    (first.checkpoint_dir / "checkpoint-3" / "adapter_model.safetensors").unlink()  # so the run is not finished
    (first.checkpoint_dir / "adapter_model.safetensors").unlink()
    dead = first.checkpoint_dir / ".saving-999999999"  # a final save cut short by kill -9 (no such pid)
    half = first.checkpoint_dir / ".saving-checkpoint-4"
    for folder in (dead, half):
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_text("half")
    resumed = train(recipe, run_name="cut", resume=True, live=False)
    assert resumed.summary["steps"] == 3
    assert "checkpoint-3 has no intact trainer_state.json" in (resumed.run_dir / "train.log").read_text()
    assert json.loads(state.read_text())["global_step"] == 3  # written again, whole
    assert not dead.exists() and not half.exists()


def test_a_damaged_recipe_snapshot_is_named_on_resume(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), training={"max_steps": 2, "save_steps": 1}))
    first = train(recipe, run_name="snap", live=False)
    shutil.rmtree(first.checkpoint_dir / "checkpoint-2")
    snapshot = first.checkpoint_dir / "recipe.toml"
    snapshot.write_text(snapshot.read_text()[:25] + '\n[lora\nr = "')
    with pytest.raises(QloraError, match="recipe snapshot .*recipe.toml is damaged"):
        train(recipe, run_name="snap", resume=True, live=False)


def test_sigterm_saves_like_ctrl_c_and_the_saved_adapter_chats(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = write_recipe(tmp_path, str(tiny_model_dir), training={"max_steps": 40, "save_steps": 1000})
    process = subprocess.Popen([*CLI, "train", str(recipe), "--run-name", "term"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("step 2/40"):
            process.send_signal(signal.SIGTERM)
            break
    out, err = process.communicate(timeout=300)
    assert process.returncode == 143, out + err
    assert "training interrupted at step" in err and "--resume --run-name term" in err
    assert list(Path("checkpoints/term").glob("checkpoint-*"))
    chat = subprocess.run([*CLI, "chat", "checkpoints/term", "--prompt", "Hi", "--max-new-tokens", "4"],
                          capture_output=True, text=True, timeout=300)
    assert chat.returncode == 0, chat.stdout + chat.stderr


def test_conversions_killed_mid_save_are_cleared_and_a_running_one_is_kept(tmp_path: Path) -> None:
    from qlora4080.builtin_models import remove_dead_conversions

    target = tmp_path / "models" / "smollm2-135m-instruct"
    dead = target.parent / ".smollm2-135m-instruct-converting-999999999"  # no such process
    older = target.parent / ".smollm2-135m-instruct-k3j9x_2a"  # what earlier versions named their staging folder
    running = target.parent / f".smollm2-135m-instruct-converting-{os.getpid()}"
    other = target.parent / ".another-model-converting-999999999"
    for folder in (dead, older, running, other):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half")
    remove_dead_conversions(target)
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([running.name, other.name])
