"""Early stopping: transformers' EarlyStoppingCallback on the validation loss, and the best checkpoint as the adapter.

The tiny model learns to answer everything with "zebra", while the validation
answers are ordinary sentences: the more it trains, the worse their loss, so
patience runs out long before max_steps and the best evaluation is an early one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DEMO_RECIPE, write_recipe
from test_cli_runner import flat, invoke
from test_resume import SigintAt

from qlora4080 import load_recipe, train
from qlora4080.training.interrupts import TrainingInterrupted

MAX_STEPS = 30
STOPPING = {"max_steps": MAX_STEPS, "eval_steps": 1, "early_stopping_patience": 2, "learning_rate": 2e-2,
            "save_total_limit": 1, "batch_size": 2}


def conversation(question: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})


def zebra_data(folder: Path) -> dict[str, str]:
    """[data] for a training set the validation set cannot profit from."""
    train_file, validation_file = folder / "zebra_train.jsonl", folder / "zebra_validation.jsonl"
    train_file.write_text("\n".join(conversation(f"Say something about number {n}.", "zebra " * 12) for n in range(8)) + "\n",
                          encoding="utf-8")
    validation_file.write_text("\n".join([
        conversation("Where is Paris?", "Paris is the capital of France, on the river Seine."),
        conversation("What do cats eat?", "Cats mostly eat meat, such as chicken or fish, and drink water."),
    ]) + "\n", encoding="utf-8")
    return {"train": str(train_file), "validation": str(validation_file)}


def evaluations(run_dir: Path) -> list[tuple[int, float]]:
    """(step, eval_loss) of every evaluation during training, from the run's metrics log."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    found = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    return found[:-1]  # the last one is the evaluation after training


def adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def test_training_stops_when_the_validation_loss_stops_improving(tiny_model_dir: Path, tmp_path: Path):
    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), data=zebra_data(tmp_path), training=STOPPING))
    result = train(recipe, run_name="stops", live=False)
    summary, evaluated = result.summary, evaluations(result.run_dir)
    print(evaluated)

    best_step, best_loss = min(evaluated, key=lambda e: e[1])
    assert best_step < summary["steps"], "the test needs a best evaluation before the last one"
    # Patience 2: the run ends at the second evaluation in a row that is no better than the best.
    assert [step for step, _ in evaluated] == list(range(1, summary["steps"] + 1))
    assert summary["steps"] == best_step + 2 < MAX_STEPS
    assert summary["stopped_early"] is True and summary["stopped_at_step"] == summary["steps"]
    assert summary["best_checkpoint"] == {"step": best_step, "eval_loss": pytest.approx(best_loss)}
    # save_total_limit = 1 keeps 2 with early stopping: the best checkpoint (the saved adapter) and the last one.
    assert {p.name for p in result.checkpoint_dir.glob("checkpoint-*")} == {f"checkpoint-{best_step}",
                                                                           f"checkpoint-{summary['steps']}"}
    saved, best = adapter_tensors(result.checkpoint_dir), adapter_tensors(result.checkpoint_dir / f"checkpoint-{best_step}")
    assert saved.keys() == best.keys() and all(saved[k].equal(best[k]) for k in saved)
    # The evaluation after training is of the best model, and summary.json says what the table said.
    assert summary["eval_loss"] == pytest.approx(best_loss, rel=1e-4)
    on_disk = json.loads((result.run_dir / "summary.json").read_text())
    assert on_disk["best_checkpoint"]["step"] == best_step and on_disk["stopped_early"] is True


def test_ctrl_c_keeps_the_checkpoint_it_resumes_from(tiny_model_dir: Path, tmp_path: Path):
    """With save_total_limit = 1 transformers deletes all but the best checkpoint when training ends, Ctrl-C included;
    the checkpoint Ctrl-C saved must survive, so --resume goes on from the step it stopped at."""
    training = {**STOPPING, "max_steps": 6, "eval_steps": 2, "early_stopping_patience": 10}  # never runs out
    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), data=zebra_data(tmp_path), training=training))
    with pytest.raises(TrainingInterrupted):
        train(recipe, run_name="cut", live=False, callbacks=[SigintAt(2)])  # stops at the end of step 3
    assert (Path("checkpoints/cut/checkpoint-3") / "trainer_state.json").is_file(), "the resume point was deleted"
    first_loss = json.loads(Path("runs/cut/metrics.jsonl").read_text().splitlines()[0])["loss"]

    resumed = train(recipe, run_name="cut", resume=True, live=False)
    logged = [json.loads(line) for line in Path("runs/cut/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3, 4, 5, 6], "resumed at step 3, not at the best one"
    assert resumed.summary["steps"] == 6 and resumed.summary["stopped_early"] is False
    assert resumed.summary["first_loss"] == pytest.approx(first_loss)  # the run's first loss, not the resumed one's


@pytest.mark.parametrize("method", ["orpo", "dpo"])
def test_preference_tuning_stops_early_on_its_validation_loss_too(method: str, tiny_model_dir: Path, tmp_path: Path):
    """Preference tuning shares the trainer arguments: the same rule, on the preference trainer's eval_loss."""
    def pairs(path: Path, answers: list[tuple[str, str, str]]) -> str:
        path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in answers),
                        encoding="utf-8")
        return str(path)

    data = {"train": pairs(tmp_path / "pairs.jsonl", [(f"Number {n}?", "zebra " * 6, "Fine, thanks.") for n in range(6)]),
            "validation": pairs(tmp_path / "pairs_validation.jsonl", [("Where is Paris?", "In France.", "zebra zebra")])}
    # A threshold no change can meet: every evaluation after the first is "no improvement", so patience 2 ends it at 3.
    training = {**STOPPING, "method": method, "early_stopping_threshold": 1e9}
    result = train(load_recipe(write_recipe(tmp_path, str(tiny_model_dir), data=data, training=training)),
                   run_name=f"{method}-stops", live=False)
    summary, evaluated = result.summary, evaluations(result.run_dir)
    assert summary["steps"] == 3 and summary["stopped_early"] is True and [s for s, _ in evaluated] == [1, 2, 3]
    best_step, best_loss = min(evaluated, key=lambda e: e[1])
    assert summary["best_checkpoint"] == {"step": best_step, "eval_loss": pytest.approx(best_loss)}
    saved, best = adapter_tensors(result.checkpoint_dir), adapter_tensors(result.checkpoint_dir / f"checkpoint-{best_step}")
    assert all(saved[k].equal(best[k]) for k in saved)


def test_early_stopping_maps_onto_transformers_arguments(tmp_path: Path):
    from transformers import EarlyStoppingCallback

    from qlora4080.hardware import Hardware
    from qlora4080.plan import resolve_plan
    from qlora4080.training.config import build_sft_config, early_stopping_callbacks

    cpu = Hardware(device="cpu", cpu_count=2)
    stopping = load_recipe(DEMO_RECIPE, ["training.eval_steps=25", "training.save_steps=100",
                                         "training.early_stopping_patience=3", "training.early_stopping_threshold=0.01"])
    config = build_sft_config(stopping, resolve_plan(stopping, cpu, "hf"), tmp_path, has_eval=True)
    assert (config.load_best_model_at_end, config.metric_for_best_model, config.greater_is_better) == (True, "eval_loss", False)
    assert config.eval_steps == config.save_steps == 25  # every evaluation saved, so the best one is on disk
    [callback] = early_stopping_callbacks(stopping)
    assert isinstance(callback, EarlyStoppingCallback)
    assert (callback.early_stopping_patience, callback.early_stopping_threshold) == (3, 0.01)

    plain = load_recipe(DEMO_RECIPE, ["training.eval_steps=25", "training.save_steps=100"])
    config = build_sft_config(plain, resolve_plan(plain, cpu, "hf"), tmp_path, has_eval=True)
    assert config.load_best_model_at_end is False and config.save_steps == 100 and early_stopping_callbacks(plain) == []


# --- recipes that cannot stop early: refused with the key named, before training ---------------------------------


def test_patience_without_eval_steps_is_refused_when_the_recipe_loads(tiny_model_dir: Path, tmp_path: Path):
    path = write_recipe(tmp_path, str(tiny_model_dir), training={"early_stopping_patience": 3})
    result = invoke("train", str(path))
    assert result.exit_code == 2
    text = flat(result.output)
    assert "training.early_stopping_patience = 3 needs evaluations during training" in text
    assert "set training.eval_steps" in text and "recipe.toml" in text
    assert not (tmp_path / "checkpoints").exists(), "refused before any run folder was made"


def test_patience_without_validation_data_is_refused_before_training(tiny_model_dir: Path, tmp_path: Path):
    path = write_recipe(tmp_path, str(tiny_model_dir), data={"validation": None},
                        training={"early_stopping_patience": 2, "eval_steps": 1})
    result = invoke("train", str(path), "--run-name", "no-validation")
    assert result.exit_code == 2
    text = flat(result.output)
    assert "[training] early_stopping_patience" in text and "this run has no validation data" in text
    assert "data.validation" in text
    assert not list(Path("checkpoints/no-validation").glob("checkpoint-*")), "no step was trained"
