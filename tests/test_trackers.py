"""Experiment trackers: transformers' TensorBoard, W&B and MLflow callbacks writing offline under runs/<run>/.

Each test trains the tiny model for two steps with one tracker and reads what
the tracker wrote back with the tracker's own reader (MLflow's client,
TensorBoard's EventAccumulator) or, for W&B's offline run file, its record log.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from pathlib import Path

import pytest
from conftest import write_recipe
from test_cli_runner import flat, invoke

from qlora4080 import load_recipe, train

QUICK = {"max_steps": 2, "learning_rate": 1e-3}
TRACKER_ENVIRONMENT = ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE", "WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT",
                       "TENSORBOARD_LOGGING_DIR")


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """None of the trackers' variables set, as on a fresh machine."""
    for name in TRACKER_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


def tracked_run(tiny_model_dir: Path, folder: Path, report_to: list[str] | None, run_name: str):
    output = {"report_to": report_to} if report_to is not None else {}
    recipe = load_recipe(write_recipe(folder, str(tiny_model_dir), training=QUICK, output=output))
    return train(recipe, run_name=run_name, live=False)


def test_mlflow_gets_a_local_run_named_after_the_run(tiny_model_dir: Path, tmp_path: Path, clean_environment: None,
                                                     monkeypatch: pytest.MonkeyPatch):
    result = tracked_run(tiny_model_dir, tmp_path, ["mlflow"], "tracked-mlflow")
    store = result.run_dir / "mlruns"
    assert store.is_dir()
    assert not any(name in os.environ for name in TRACKER_ENVIRONMENT), "the run's settings did not outlive it"
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
    assert not (result.run_dir / "tensorboard").exists(), "report_to = [\"mlflow\"] leaves TensorBoard out"

    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # reading the store back needs the same opt-in
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    runs = [run for experiment in client.search_experiments() for run in client.search_runs([experiment.experiment_id])]
    assert len(runs) == 1, "one run, the evaluation after training included"
    run = runs[0]
    assert run.info.run_name == "tracked-mlflow" and run.info.status == "FINISHED"
    assert run.data.params["training.learning_rate"] == "0.001" and run.data.params["model.name"] == str(tiny_model_dir)
    assert run.data.params["learning_rate"] == "0.001"  # transformers' own record of its arguments
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == [1, 2] and losses[0].value == pytest.approx(result.summary["first_loss"])
    assert client.get_metric_history(run.info.run_id, "eval_loss")[-1].value == pytest.approx(result.summary["eval_loss"])


def test_mlflow_uses_the_tracking_uri_the_environment_names(tiny_model_dir: Path, tmp_path: Path,
                                                            clean_environment: None, monkeypatch: pytest.MonkeyPatch):
    elsewhere = (tmp_path / "my-store").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    result = tracked_run(tiny_model_dir, tmp_path, ["mlflow"], "tracked-elsewhere")
    assert not (result.run_dir / "mlruns").exists() and (tmp_path / "my-store").is_dir()
    assert os.environ["MLFLOW_TRACKING_URI"] == elsewhere


def wandb_records(run_file: Path) -> list:
    """The protobuf records of an offline W&B run file (a LevelDB-style log: 32 KiB blocks of checksummed chunks)."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, chunks, records = run_file.read_bytes(), 32768, 7, b"", []  # 7: the ":W&B" file header
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0 and length == 0:
            break
        chunks += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or a record's last chunk
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def test_wandb_writes_an_offline_run_with_the_recipe_as_config(tiny_model_dir: Path, tmp_path: Path,
                                                               clean_environment: None):
    result = tracked_run(tiny_model_dir, tmp_path, ["wandb"], "tracked-wandb")
    assert not any(name in os.environ for name in TRACKER_ENVIRONMENT)
    import wandb

    assert wandb.run is None, "the run was finished"
    run_files = list((result.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    records = wandb_records(run_files[0])
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.display_name, run.project) == ("tracked-wandb", "qlora4080")
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    config |= {item.key: json.loads(item.value_json) for r in records if r.WhichOneof("record_type") == "config"
               for item in r.config.update}
    assert config["training.learning_rate"] == 0.001 and config["training.max_steps"] == 2
    assert config["learning_rate"] == 0.001  # transformers' own record of its arguments
    logged = [{"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in r.history.item}
              for r in records if r.WhichOneof("record_type") == "history"]
    losses = [row["train/loss"] for row in logged if "train/loss" in row]
    assert losses and losses[0] == pytest.approx(result.summary["first_loss"])
    assert any(row.get("eval/loss") == pytest.approx(result.summary["eval_loss"]) for row in logged)


def test_tensorboard_is_the_default_and_writes_under_the_run(tiny_model_dir: Path, tmp_path: Path,
                                                             clean_environment: None):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert load_recipe(write_recipe(tmp_path, str(tiny_model_dir))).output.report_to == ["tensorboard"]
    result = tracked_run(tiny_model_dir, tmp_path, None, "tracked-tensorboard")
    folder = result.run_dir / "tensorboard"
    assert list(folder.glob("events.out.tfevents.*"))
    assert not list(result.checkpoint_dir.rglob("events.out.tfevents.*")), "no event file strays into the checkpoint"
    events = EventAccumulator(str(folder))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    assert "recipe/text_summary" in events.Tags()["tensors"]  # add_text is stored as a text tensor
    later = EventAccumulator(str(max(folder.glob("events.out.tfevents.*"))))  # the evaluation after training
    later.Reload()
    assert later.Scalars("eval/loss")[-1].value == pytest.approx(result.summary["eval_loss"], rel=1e-5)


def test_a_tracker_that_is_not_installed_is_refused_before_anything_loads(tiny_model_dir: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch):
    real_find_spec = importlib.util.find_spec

    def without_wandb(name: str, *args: object, **kwargs: object):
        return None if name == "wandb" else real_find_spec(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", without_wandb)
    path = write_recipe(tmp_path, str(tiny_model_dir), output={"report_to": ["tensorboard", "wandb"]})
    result = invoke("train", str(path))
    assert result.exit_code == 2
    text = flat(result.output)
    assert "output.report_to names wandb, which is not installed" in text
    assert "pip install 'qlora4080[trackers]'" in text and "recipe.toml" in text
    assert not (tmp_path / "checkpoints").exists(), "refused before any run folder (or model) was made"


def test_a_run_stopped_by_an_exception_ends_its_tracker_runs_as_failed(tiny_model_dir: Path, tmp_path: Path,
                                                                       clean_environment: None, monkeypatch: pytest.MonkeyPatch):
    """No callback is told when the trainer raises; train() ends the trackers' runs as failed itself."""
    from transformers import TrainerCallback

    from qlora4080.training.trackers import close_failed_run

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise RuntimeError("crash at step 1")

    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), training=QUICK, output={"report_to": ["mlflow", "wandb"]}))
    with pytest.raises(RuntimeError, match="crash at step 1"):
        train(recipe, run_name="crashed", live=False, callbacks=[Crash()])
    assert not any(name in os.environ for name in TRACKER_ENVIRONMENT), "the run's settings did not outlive it"
    import mlflow
    import wandb

    assert wandb.run is None and mlflow.active_run() is None
    close_failed_run()  # nothing open: nothing happens
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(Path("runs/crashed/mlruns")).resolve().as_uri())
    [run] = [run for experiment in client.search_experiments() for run in client.search_runs([experiment.experiment_id])]
    assert run.info.run_name == "crashed" and run.info.status == "FAILED"


def test_an_online_wandb_run_without_login_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path,
                                                            clean_environment: None, monkeypatch: pytest.MonkeyPatch):
    """WANDB_MODE=online with no API key: wandb refuses in on_train_begin; that is a QloraError, not a traceback."""
    from qlora4080.errors import QloraError

    for name in ("WANDB_API_KEY", "WANDB_CONFIG_DIR", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, no stored W&B login
    monkeypatch.setenv("WANDB_MODE", "online")
    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), training=QUICK, output={"report_to": ["wandb", "mlflow"]}))
    with pytest.raises(QloraError, match="wandb could not start this run's tracking") as refused:
        train(recipe, run_name="not-logged-in", live=False)
    assert refused.value.where == "[output] report_to" and "wandb login" in (refused.value.hint or "")
    assert not any(name in os.environ for name in TRACKER_ENVIRONMENT if name != "WANDB_MODE"), "settings restored"
    import wandb

    assert wandb.run is None
