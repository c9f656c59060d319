"""Checkpoints, resume, Ctrl-C and out-of-memory handling, on the CPU with the tiny model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import CLI, write_recipe
from transformers import TrainerCallback

from qlora4080 import load_recipe, train
from qlora4080.errors import QloraError
from qlora4080.training.interrupts import TrainingInterrupted

STEPS = {"max_steps": 6, "save_steps": 3, "logging_steps": 1}


def _losses(run_dir: Path) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if "loss" in line]


class SigintAt(TrainerCallback):
    """Sends this process a real SIGINT once the given step ends (as a user's Ctrl-C would)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


class RaiseOOMAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, tiny_model_dir):
    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), lora={"dropout": 0.0}, training=STEPS))
    straight = train(recipe, run_name="straight", live=False)
    expected = _losses(straight.run_dir)
    assert len(expected) == 6

    with pytest.raises(TrainingInterrupted) as info:
        train(recipe, run_name="cut", live=False, callbacks=[SigintAt(2)])
    assert info.value.exit_code == 130
    assert "--resume --run-name cut" in info.value.hint
    first_part = _losses(Path("runs/cut"))
    assert 2 <= len(first_part) < 6
    assert (Path("checkpoints/cut") / f"checkpoint-{len(first_part)}" / "trainer_state.json").is_file()
    assert (Path("checkpoints/cut") / "adapter_model.safetensors").is_file()  # the adapter so far is usable

    # A copy of the save with one file gone: refused by name, instead of a traceback or a fresh optimizer.
    saved = Path("checkpoints/cut") / f"checkpoint-{len(first_part)}"
    for missing in ("optimizer.pt", "scheduler.pt", "adapter_model.safetensors"):
        broken = tmp_path / "broken" / missing.split(".")[0] / saved.name
        shutil.copytree(saved, broken)
        (broken / missing).unlink()
        with pytest.raises(QloraError, match=f"cannot be resumed exactly: {missing} is missing"):
            train(recipe, resume_from=broken, live=False)
    # Damaged rather than missing: garbage, empty, cut short (an UnpicklingError, a bare "Aborted.", a zip error).
    for damaged, cut in (("optimizer.pt", lambda data: b"garbage\n"), ("scheduler.pt", lambda data: b""),
                         ("rng_state.pth", lambda data: data[:100])):
        broken = tmp_path / "damaged" / damaged.split(".")[0] / saved.name
        shutil.copytree(saved, broken)
        (broken / damaged).write_bytes(cut((broken / damaged).read_bytes()))
        with pytest.raises(QloraError, match=f"cannot be resumed exactly: {damaged} is damaged or truncated"):
            train(recipe, resume_from=broken, live=False)

    resumed = train(recipe, run_name="cut", resume=True, live=False)
    assert resumed.summary["steps"] == 6
    combined = _losses(Path("runs/cut"))
    assert torch.allclose(torch.tensor(combined), torch.tensor(expected), atol=1e-5), (combined, expected)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, tiny_model_dir):
    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir)))
    with pytest.raises(QloraError, match="no earlier run"):
        train(recipe, resume=True)
    with pytest.raises(QloraError, match="no resumable checkpoint"):
        train(recipe, resume_from=tmp_path)


def test_out_of_memory_becomes_ordered_advice(tmp_path, tiny_model_dir):
    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), model={"max_seq_len": 1024},
                                      training={"batch_size": 4, "grad_accum": 2, "eval_steps": 50}))
    with pytest.raises(QloraError) as info:
        train(recipe, run_name="oom", live=False, callbacks=[RaiseOOMAt()])
    error = info.value
    assert error.exit_code == 3
    assert "out of GPU memory at step 2" in error.message and "peak seen" in error.message
    lines = [line.strip() for line in error.hint.splitlines()[1:]]
    assert lines == [
        "1. --set model.max_seq_len=512",
        "2. --set training.batch_size=1 --set training.grad_accum=8",
        "3. --set lora.r=4 --set lora.alpha=8",
        "4. --set training.eval_steps=200",
        "5. --set model.load_in_4bit=true",
    ]


def test_ctrl_c_on_the_command_line_saves_and_prints_the_resume_command(tmp_path, tiny_model_dir):
    recipe = write_recipe(tmp_path, str(tiny_model_dir), training={"max_steps": 40, "save_steps": 1000, "logging_steps": 1,
                                                                   "learning_rate": 1e-3})
    process = subprocess.Popen([*CLI, "train", str(recipe), "--run-name", "sig"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith("step 3/40"):
            process.send_signal(signal.SIGINT)
            break
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130, "".join(seen) + out + err
    assert "training interrupted at step" in err
    assert "qlora4080 train recipe.toml --resume --run-name sig" in err
    stopped_at = max(int(p.name.split("-")[1]) for p in Path("checkpoints/sig").glob("checkpoint-*"))
    assert 3 <= stopped_at < 40

    resumed = subprocess.run([*CLI, "train", str(recipe), "--resume", "--run-name", "sig"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    log = Path("runs/sig/train.log").read_text()
    assert "resumed from" in log and "step 40/40" in log
