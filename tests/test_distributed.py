"""Training with several processes: two CPU processes (gloo) train exactly as one process with the same global batch.

The two-process runs are real launches (`qlora4080 train --processes 2`, which runs
torchrun, and `accelerate launch --config_file accelerate/ddp.yaml`) of the tiny
random-weight model. On a machine without a GPU the processes fall back to CPU and gloo.

Which pairing gives the same data: the trainer draws one seeded permutation of the
training rows and cuts it into per-device batches; with two processes, process r takes
batches r, r+2, r+4... So 1 row per device x grad-accum 2 x 2 processes consumes rows
0-3 of the permutation in the first optimizer step, exactly as 2 rows x grad-accum 2 x
1 process does. The loss is normalised by the trained-token count of all processes
together and DDP averages the gradients, so both runs compute the same update; only the
order of fp32 sums differs (measured here: equal losses, grad norms within 1e-7).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLI, DEMO_DATA, REPO, write_recipe

from qlora4080 import load_recipe, train
from qlora4080.errors import QloraError

STEPS = 3
LOSS_TOLERANCE = 1e-5  # relative; measured differences are ~1e-7 (fp32 summation order)


def _env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def _recipe(work: Path, model: Path) -> Path:
    """The tiny model on a data build (process 0 builds it, the other process reads it), 1 x grad-accum 2."""
    sources = [{"path": str(DEMO_DATA / "train.jsonl"), "name": "cards"}]
    return write_recipe(work, str(model), training={"max_steps": STEPS, "batch_size": 1, "grad_accum": 2},
                        data={"train": None, "validation": None, "sources": sources, "valid_min": 10,
                              "build_dir": str(work / "data_builds")},
                        output={"checkpoints_dir": str(work / "checkpoints"), "runs_dir": str(work / "runs")})


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def _messages(log: Path) -> list[str]:
    """train.log lines without their timestamps."""
    return [line[20:] for line in log.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def one_process(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The reference: one process, 2 per device x grad-accum 2 = global batch 4."""
    work = tmp_path_factory.mktemp("one")
    return train(load_recipe(_recipe(work, tiny_model_dir), ["training.batch_size=2"]), run_name="one", live=False)


def _check_two_process_run(work: Path, result: subprocess.CompletedProcess[str], one_process) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # one run, one name: process 0 chose the timestamped default name and process 1 used it
    runs, checkpoints = [p for p in (work / "runs").iterdir() if p.is_dir()], [p for p in (work / "checkpoints").iterdir() if p.is_dir()]
    assert len(runs) == 1 and [p.name for p in checkpoints] == [runs[0].name], (runs, checkpoints)
    run_dir, checkpoint = runs[0], checkpoints[0]
    assert re.fullmatch(r"recipe-\d{8}-\d{6}", run_dir.name)

    # every file written once, by process 0
    assert {"adapter_model.safetensors", "adapter_config.json", "recipe.toml", "qlora4080.json"} <= {
        p.name for p in checkpoint.iterdir()}
    assert not list(checkpoint.glob(".saving-*"))
    records = _metrics(run_dir)
    assert [r["step"] for r in records if "loss" in r] == list(range(1, STEPS + 1))  # one line per step, not two
    assert len(records) == len(_metrics(one_process.run_dir))
    messages = _messages(run_dir / "train.log")
    assert len(messages) == len(set(messages)), "a line of train.log is written twice"
    [build] = [p for p in (work / "data_builds").iterdir() if not p.name.startswith(".")]  # not the build's lock file
    assert [m for m in messages if m.startswith("data build")] == [f"data build {build} (built)"]
    assert output.count("Run summary") == 1 and output.count("Done.") == 1  # process 1 prints nothing
    assert "Traceback" not in output

    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert (summary["processes"], summary["global_batch"]) == (2, 4)
    assert (one_process.summary["processes"], one_process.summary["global_batch"]) == (1, 4)
    # tokens are counted over both processes, so they equal the single process's count
    assert summary["tokens_seen"] == one_process.summary["tokens_seen"]
    assert "global batch 4 (1 per device x grad-accum 2 x 2 processes)" in output

    # same data, same update: the per-step losses of one process
    expected = [r["loss"] for r in _metrics(one_process.run_dir) if "loss" in r]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses == pytest.approx(expected, rel=LOSS_TOLERANCE), (losses, expected)
    assert losses[-1] < losses[0]


def test_processes_2_trains_like_one_process_with_the_same_global_batch(tiny_model_dir, tmp_path, one_process):
    recipe = _recipe(tmp_path, tiny_model_dir)
    result = subprocess.run([*CLI, "train", str(recipe), "--processes", "2"], cwd=tmp_path, env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert "torchrun --standalone --nproc_per_node 2 -m qlora4080 train" in result.stdout
    _check_two_process_run(tmp_path, result, one_process)


def test_accelerate_launch_with_the_shipped_ddp_config(tiny_model_dir, tmp_path, one_process):
    recipe = _recipe(tmp_path, tiny_model_dir)
    launcher = Path(sys.executable).parent / "accelerate"
    result = subprocess.run([str(launcher), "launch", "--config_file", str(REPO / "accelerate" / "ddp.yaml"),
                             "-m", "qlora4080", "train", str(recipe)], cwd=tmp_path, env=_env(),
                            capture_output=True, text=True, timeout=600)
    _check_two_process_run(tmp_path, result, one_process)


def test_a_refusal_on_process_0_stops_both_processes(tiny_model_dir, tmp_path):
    recipe = write_recipe(tmp_path, str(tiny_model_dir))
    earlier = tmp_path / "runs" / "taken"
    earlier.mkdir(parents=True)
    (earlier / "train.log").write_text("an earlier run\n", encoding="utf-8")
    result = subprocess.run([*CLI, "train", str(recipe), "--processes", "2", "--run-name", "taken"], cwd=tmp_path,
                            env=_env(), capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert output.count("run 'taken' already exists") == 1, output  # process 0's panel; process 1 stops quietly
    assert "Traceback" not in output and "ChildFailedError" not in output
    assert (earlier / "train.log").read_text(encoding="utf-8") == "an earlier run\n"


@pytest.mark.parametrize(("variable", "strategy"), [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_unsloth_refuses_fsdp_and_deepspeed(tiny_model_dir, tmp_path, monkeypatch, variable, strategy):
    monkeypatch.setenv(variable, "true")
    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), model={"backend": "unsloth"}))
    with pytest.raises(QloraError, match=f"unsloth backend does not support {strategy}") as refused:
        train(recipe, run_name="sharded", live=False)
    assert refused.value.hint is not None and "model.backend=hf" in refused.value.hint


def test_processes_inside_a_launched_run_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from qlora4080.cli import app

    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; RANK stays 0, so this process speaks
    recipe = write_recipe(tmp_path, str(tiny_model_dir))
    result = CliRunner().invoke(app, ["train", str(recipe), "--processes", "2"])
    assert result.exit_code == 2, result.output
    assert "leave out --processes" in result.output


def test_dry_run_states_the_global_batch(tiny_model_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from qlora4080.cli import app
    from qlora4080.console import console

    monkeypatch.setattr(console, "_width", 200)  # one line per message (see test_cli_runner.wide_console)
    recipe = write_recipe(tmp_path, str(tiny_model_dir), training={"batch_size": 2, "grad_accum": 3})
    result = CliRunner().invoke(app, ["train", str(recipe), "--dry-run", "--processes", "2"])
    assert result.exit_code == 0, result.output
    assert "global batch 12 (2 per device x grad-accum 3 x 2 processes)" in result.output


def test_one_process_decides_alone(monkeypatch):
    """Without a launcher the helpers are plain calls: no process group, nothing to wait for."""
    from qlora4080 import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.decided_by_main(lambda: "name", "planning") == "name"
    assert distributed.any_process(True) and distributed.sum_over_processes([3, 4]) == [3, 4]
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(QloraError, match="whole number of seconds"):
        distributed.timeout_seconds()


@pytest.mark.slow  # two launches of two processes: about a minute on 2 cores
def test_ctrl_c_stops_every_process_at_one_step_and_resume_continues(tiny_model_dir, tmp_path):
    import signal
    import time

    steps = 400  # ~0.1 s a step: 100 once finished before a signal sent under load reached both processes
    recipe = write_recipe(tmp_path, str(tiny_model_dir), training={"max_steps": steps, "batch_size": 1, "grad_accum": 1},
                          data={"validation": None})
    command = [*CLI, "train", str(recipe), "--processes", "2", "--run-name", "stop"]
    metrics = tmp_path / "runs" / "stop" / "metrics.jsonl"
    # as a terminal's Ctrl-C does: the signal reaches the launching process, which passes it on to the two processes
    with subprocess.Popen(command, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as launched:
        deadline = time.monotonic() + 300
        while not (metrics.is_file() and metrics.read_text(encoding="utf-8").count('"loss"') >= 2):
            assert launched.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        launched.send_signal(signal.SIGINT)
        output, _ = launched.communicate(timeout=300)
    assert launched.returncode == 130, output
    assert output.count("training interrupted at step") == 1 and "Traceback" not in output, output
    assert "--resume --run-name stop --processes 2" in output
    stopped_at = max(json.loads(line)["step"] for line in metrics.read_text(encoding="utf-8").splitlines())
    assert stopped_at < steps and (tmp_path / "checkpoints" / "stop" / f"checkpoint-{stopped_at}").is_dir()

    resumed = subprocess.run([*command, "--resume"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    logged = [r["step"] for r in _metrics(metrics.parent) if "loss" in r]
    assert logged == list(range(1, steps + 1))  # each step once: both processes stopped, and went on, at the same step
