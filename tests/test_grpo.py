"""GRPO: the rewards on hand-written answers, prompt records, the recipe's [grpo] table, training, resume and eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, write_recipe
from typer.testing import CliRunner

from qlora4080 import load_recipe, train
from qlora4080.cli import app
from qlora4080.errors import QloraError
from qlora4080.methods.grpo_settings import GRPOSection
from qlora4080.methods.prompt_records import PROMPTS, read_prompt_records, to_prompt
from qlora4080.methods.rewards import RewardContext, RewardFailed, builtin_reward, guarded, load_function

DEMO_RECIPE = REPO / "recipes" / "smollm2_135m_grpo.toml"
PROMPT_DATA = REPO / "recipes" / "data" / "arithmetic_prompts"
CONTEXT = RewardContext(max_completion_length=10, stop_ids=frozenset({2}))


def chat(*texts: str) -> list[list[dict[str, str]]]:
    """Answers as TRL passes them for chat prompts: each a one-message list."""
    return [[{"role": "assistant", "content": text}] for text in texts]


def score(name: str, *texts: str, answer: list[str | None] | None = None,
          ids: list[list[int]] | None = None) -> list[float | None]:
    reward = guarded(builtin_reward(name, CONTEXT), name, "built-in")
    completions = chat(*texts)
    return list(reward(prompts=[[{"role": "user", "content": "q"}]] * len(texts), completions=completions,
                       completion_ids=ids or [[5]] * len(texts), answer=answer or [None] * len(texts),
                       tags=[[]] * len(texts)))


def test_exact_match_reads_the_final_number_as_eval_does():
    answers = ["so 3 + 4 = 7", "The answer is 7.0", "\\boxed{8}", "it is 7, no wait 6", "I don't know"]
    assert score("exact_match", *answers, answer=["7"] * 5) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert score("exact_match", "7", "7", answer=["no number here", None]) == [None, None]  # unscored


def test_answer_format_wants_a_marked_final_number():
    assert score("answer_format", "\\boxed{12}", "#### 12", "The answer is 12", "答案是 12", "12", "answer: none") == \
        [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_json_rewards_against_the_reference_card():
    card = json.dumps({"name": "Ana", "age": None, "city": "Porto"})
    answers = ['{"name": "Ana", "age": null, "city": "Porto"}',  # the card
               '{"name": "Ana", "age": 30, "city": "Porto"}',  # an invented age
               '{"name": "Ana"}',  # keys missing
               "Ana is from Porto",  # not JSON
               '["Ana"]']  # JSON, not an object
    assert score("json_valid", *answers) == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert score("json_keys", *answers, answer=[card] * 5) == [1.0, 1.0, 0.0, 0.0, 0.0]
    fields = score("json_fields", *answers, answer=[card] * 5)
    assert fields == [1.0, pytest.approx(2 / 3), pytest.approx(1 / 3), 0.0, 0.0]
    assert score("json_keys", answers[0], answer=["not json"]) == [None]
    assert score("json_fields", answers[0], answer=[None]) == [None]


def test_stopped_and_length_penalty_read_the_answer_tokens():
    ids = [[7, 8, 2], [7] * 10, [], [2]]  # ended its turn; cut at the limit; empty; ended at once
    assert score("stopped", "a", "b", "c", "d", ids=ids) == [1.0, 0.0, 0.0, 1.0]
    assert score("length_penalty", "a", "b", "c", "d", ids=ids) == [-0.3, -1.0, 0.0, -0.1]


def test_a_reward_that_raises_or_returns_the_wrong_shape_is_named_with_the_prompt_and_value():
    prompts = [[{"role": "user", "content": "What is 2+2?"}]] * 2

    def boom(completions, **kwargs):
        raise KeyError("answer")

    with pytest.raises(RewardFailed, match=r"reward boom \(mine.py\) raised KeyError: 'answer' \(first prompt of the "
                                           r"batch: 'What is 2\+2\?'\)"):
        guarded(boom, "boom", "mine.py")(prompts=prompts, completions=chat("4", "5"), completion_ids=[[1], [1]])
    for value, why in [(0.5, "returned 0.5 for 2 completions"), ([1.0], "returned 1 values for 2 completions"),
                       ([1.0, "high"], "returned 'high' for completion 1 of the prompt 'What is 2\\+2\\?': '5'"),
                       ([1.0, float("nan")], "returned nan for completion 1"),
                       ({"a": 1}, "returned \\{'a': 1\\} for 2 completions")]:
        with pytest.raises(RewardFailed, match=why):
            guarded(lambda value=value, **kwargs: value, "shape", "mine.py")(
                prompts=prompts, completions=chat("4", "5"), completion_ids=[[1], [1]])
    ok = guarded(lambda **kwargs: [1, None], "fine", "mine.py")
    assert ok.__name__ == "fine"
    assert ok(prompts=prompts, completions=chat("4", "5"), completion_ids=[[1], [1]]) == [1.0, None]


def test_the_demo_reward_of_ours_scores_the_question_numbers_the_answer_uses():
    uses_the_numbers = load_function(PROMPT_DATA / "rewards.py", "uses_the_numbers")
    prompts = [[{"role": "user", "content": "Tom has 3 apples and gets 4 more. How many?"}]] * 3
    scores = uses_the_numbers(prompts=prompts, completions=chat("3 + 4 = 7", "He has 7.", "4 apples, so 8"))
    assert scores == [1.0, 0.0, 0.5]
    assert uses_the_numbers(prompts=[[{"role": "user", "content": "Hi"}]], completions=chat("7")) == [None]


def test_prompt_records_in_every_shape_and_why_others_are_refused():
    plain = to_prompt({"prompt": "2+2?", "answer": 4, "system": "Be brief."}, "prompts", {}, "x")
    assert not isinstance(plain, str)
    assert plain.prompt == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    assert plain.answer == "4"
    card = to_prompt({"prompt": "Ana", "answer": {"name": "Ana"}}, "prompts", {}, "x")
    assert not isinstance(card, str) and json.loads(card.answer or "") == {"name": "Ana"}
    conversation = to_prompt({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]},
                             "prompts", {}, "x")
    assert not isinstance(conversation, str) and conversation.answer == "Hey" and len(conversation.prompt) == 1
    cmath = to_prompt({"question": "3 apples and 4 more?", "golden": "7"}, "cmath", {}, "x")
    assert not isinstance(cmath, str) and cmath.answer == "7" and cmath.prompt[-1]["content"] == "3 apples and 4 more?"
    renamed = to_prompt({"q": "2+2?", "a": "4"}, "prompts", {"prompt": "q", "answer": "a"}, "x")
    assert not isinstance(renamed, str) and renamed.answer == "4"
    refusals = {
        "needs 'prompt' (a string or messages) or 'messages'": {"question": "Hi"},
        "'prompt' is empty": {"prompt": "  "},
        "must end with a user (or tool) turn": {"prompt": [{"role": "system", "content": "Hi"}]},
    }
    for reason, record in refusals.items():
        problem = to_prompt(record, "prompts", {}, "x")
        assert isinstance(problem, str) and reason in problem, (reason, problem)


def test_prompts_are_detected_and_data_check_reads_them(tmp_path):
    from qlora4080.methods.registry import record_kinds

    prompts = [{"prompt": "q", "answer": "1"}] * 3
    assert next(kind.name for kind in record_kinds() if kind.detect(prompts)) == "prompts"
    conversations = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}] * 3
    assert next(kind.name for kind in record_kinds() if kind.detect(conversations)) == "conversations"
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [{"prompt": "q", "answer": 1}, {"prompt": ""}]),
                    encoding="utf-8")
    checked = CliRunner().invoke(app, ["data", "check", str(path)], env={"COLUMNS": "200"})
    assert checked.exit_code == 1 and "format: prompts (detected)" in checked.output
    assert "'prompt' is empty" in checked.output
    # a conversation format several kinds read is checked as conversations, as before grpo read it too
    cmath = tmp_path / "c.jsonl"
    cmath.write_text(json.dumps({"question": "q", "golden": "1"}) + "\n", encoding="utf-8")
    assert "format: cmath" in CliRunner().invoke(app, ["data", "check", str(cmath), "--format", "cmath"]).output


def grpo_recipe(tmp_path: Path, model: Path, rewards: list[object] | None = None, **training: object) -> Path:
    return write_recipe(tmp_path, str(model),
                        data={"train": str(PROMPT_DATA / "train.jsonl"), "validation": None},
                        training={"method": "grpo", "max_steps": 2, "batch_size": 2, "learning_rate": 1e-3, **training},
                        grpo={"num_generations": 2, "max_completion_length": 8, "sample_every": 1,
                              "rewards": rewards or ["exact_match", {"name": "stopped", "weight": 0.5},
                                                     {"path": str(PROMPT_DATA / "rewards.py"),
                                                      "function": "uses_the_numbers"}]})


def test_recipe_errors_name_the_key_and_what_to_do(tmp_path, tiny_model_dir):
    path = grpo_recipe(tmp_path, tiny_model_dir)
    assert [r.label for r in load_recipe(path).table(GRPOSection).rewards] == ["exact_match", "stopped",
                                                                              "uses_the_numbers"]
    cases = {
        "unknown built-in reward 'exact'": ['grpo.rewards=["exact"]'],
        "rewards is empty: GRPO learns only from rewards": ["grpo.rewards=[]"],
        "the reward file .*nope.py does not exist": ['grpo.rewards=[{path = "nope.py", function = "f"}]'],
        "has no function 'score' \\(functions defined there: uses_the_numbers\\)":
            [f'grpo.rewards=[{{path = "{PROMPT_DATA / "rewards.py"}", function = "score"}}]'],
        "needs both path": ['grpo.rewards=[{path = "x.py"}]'],
        "two rewards are named 'stopped'": ['grpo.rewards=["stopped", "stopped"]'],
        "leaves 0 tokens of model.max_seq_len 128 for the prompt": ["grpo.max_completion_length=128"],
        "num_generations = 1: Input should be greater than or equal to 2": ["grpo.num_generations=1"],
        "early_stopping_patience watches the validation loss": ["training.early_stopping_patience=2",
                                                                "training.eval_steps=5"],
    }
    for message, overrides in cases.items():
        with pytest.raises(QloraError, match=message):
            load_recipe(path, overrides)
    # a reward file next to the recipe is found from any working folder, and the snapshot makes it absolute
    (tmp_path / "mine.py").write_text("def score(completions, **kwargs):\n    return [1.0] * len(completions)\n",
                                      encoding="utf-8")
    recipe = load_recipe(path, ['grpo.rewards=[{path = "mine.py", function = "score"}]'])
    assert f'path = "{tmp_path / "mine.py"}"' in recipe.to_toml()


def test_a_reward_file_that_fails_to_import_is_named(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\ndef score(**kwargs):\n    return []\n", encoding="utf-8")
    with pytest.raises(QloraError, match="broken.py raised ModuleNotFoundError when imported"):
        load_function(broken, "score")


def test_prompt_splits_keep_the_reference_and_drop_prompts_without_room(tmp_path, smol_tokenizer, tiny_model_dir):
    recipe = load_recipe(grpo_recipe(tmp_path, tiny_model_dir))
    lines: list[str] = []

    class Log:
        def line(self, text: str, *, style: str | None = None, echo: bool = True) -> None:
            lines.append(text)

    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "word " * 200, "answer": "1"}) + "\n"
                    + json.dumps({"prompt": "Ana, 30, cook, Porto", "answer": {"name": "Ana"}}) + "\n", encoding="utf-8")
    train_split, _ = PROMPTS.tokenize(long, None, smol_tokenizer, recipe, Log())
    rows = train_split.dataset.to_list()
    assert len(rows) == 1 and rows[0]["prompt"] == [{"role": "user", "content": "Ana, 30, cook, Porto"}]
    assert json.loads(rows[0]["answer"]) == {"name": "Ana"}
    assert any("longer than 120 tokens" in line for line in lines)
    assert any("the prompt is" in line and "leaves 120 beside [grpo] max_completion_length" in line for line in lines)
    assert len(read_prompt_records(PROMPT_DATA / "validation.jsonl").records) == 40


def test_two_grpo_steps_train_the_adapter_and_log_rewards(tmp_path, tiny_model_dir):
    result = train(load_recipe(grpo_recipe(tmp_path, tiny_model_dir)), run_name="grpo", live=False)
    metrics = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    step = next(m for m in metrics if "loss" in m)
    for key in ("reward", "reward_std", "rewards/exact_match/mean", "rewards/stopped/mean",
                "completions/mean_length", "completions/clipped_ratio", "tokens_per_second"):
        assert key in step, key
    log = (result.run_dir / "train.log").read_text(encoding="utf-8")
    assert "grpo: 2 prompt(s) x 2 answers per micro-step, rewards exact_match x1, stopped x0.5, " \
           "uses_the_numbers x1; answers sampled with transformers' generate (vLLM is not used)" in log
    assert "sample at step 1: " in log and "reward " in log
    # every answer of the step counted: 2 prompts x 2 answers x 8 tokens at most, per step
    assert 0 < result.summary["trained_tokens_seen"] <= 2 * 2 * 2 * 8
    assert result.summary["tokens_seen"] > result.summary["trained_tokens_seen"]
    assert "last_reward" in result.summary
    meta = json.loads((result.checkpoint_dir / "qlora4080.json").read_text())
    assert meta["method"] == "grpo"


def test_the_preflight_counts_the_sampled_answers_and_offers_fewer_first(tmp_path):
    from qlora4080.preflight import run_preflight

    recipe = load_recipe(REPO / "recipes" / "qwen3_4b_math_grpo.toml")
    report = run_preflight(recipe, None, "hf", offline=True)
    assert report.fits and report.estimate is not None
    parts = report.estimate.parts
    assert "generation beyond the training pass (KV cache of 8 answers)" in parts
    # a batch row is one prompt's 8 answers: twice the answers, about twice the activations
    doubled = run_preflight(load_recipe(REPO / "recipes" / "qwen3_4b_math_grpo.toml", ["grpo.num_generations=16"]),
                            None, "hf", offline=True)
    assert doubled.estimate is not None
    assert doubled.estimate.parts["activations (checkpointed)"] == pytest.approx(2 * parts["activations (checkpointed)"])
    big = load_recipe(REPO / "recipes" / "qwen3_4b_math_grpo.toml",
                      ["grpo.num_generations=16", "model.max_seq_len=1024", "grpo.max_completion_length=768"])
    too_big = run_preflight(big, None, "hf", offline=True)
    assert not too_big.fits and too_big.overrides == ["--set grpo.num_generations=4"]
    # the KV cache of a long generation can exceed the training pass it precedes
    long_answers = load_recipe(REPO / "recipes" / "qwen3_4b_math_grpo.toml",
                               ["model.max_seq_len=4096", "grpo.max_completion_length=3500", "grpo.num_generations=16",
                                "training.gradient_checkpointing=true"])
    estimate = run_preflight(long_answers, None, "hf", offline=True).estimate
    assert estimate is not None and estimate.parts["generation beyond the training pass (KV cache of 16 answers)"] >= 0


def test_the_demo_recipes_load(tmp_path):
    demo = load_recipe(DEMO_RECIPE)
    settings = demo.table(GRPOSection)
    assert demo.training.method == "grpo" and [r.label for r in settings.rewards] == [
        "exact_match", "answer_format", "stopped", "uses_the_numbers"]
    assert len(read_prompt_records(demo.resolve_path(str(demo.data.train))).records) == 240
    preset = load_recipe(REPO / "recipes" / "qwen3_4b_math_grpo.toml")
    assert preset.model.adapter == "checkpoints/qwen3-emoji" and [s.format for s in preset.data.sources] == ["cmath", "mawps"]


PARITY = "def parity(completion_ids, **kwargs):\n    return [float(ids[0] % 2) if ids else 0.0 for ids in completion_ids]\n"
"""A reward with variance on a random model (its first token's parity), so every step has advantages to train on."""


def parity_recipe(tmp_path: Path, model: Path, **training: object) -> Path:
    (tmp_path / "parity.py").write_text(PARITY, encoding="utf-8")
    return grpo_recipe(tmp_path, model, [{"path": "parity.py", "function": "parity"}, "length_penalty"], **training)


def _per_step(run_dir: Path, key: str) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line[key] for line in lines if "loss" in line and key in line]


def test_grpo_resumes_after_ctrl_c_like_an_uninterrupted_run(tmp_path, tiny_model_dir):
    import torch
    from test_resume import SigintAt

    from qlora4080.training.interrupts import TrainingInterrupted

    recipe = load_recipe(parity_recipe(tmp_path, tiny_model_dir, max_steps=5, save_steps=3, learning_rate=5e-2))
    straight = train(recipe, run_name="straight", live=False)
    assert len(_per_step(straight.run_dir, "reward")) == 5 and max(_per_step(straight.run_dir, "grad_norm")) > 0
    with pytest.raises(TrainingInterrupted) as info:
        train(recipe, run_name="cut", live=False, callbacks=[SigintAt(2)])
    assert "--resume --run-name cut" in info.value.hint
    resumed = train(recipe, run_name="cut", resume=True, live=False)
    assert resumed.summary["steps"] == 5
    for key in ("reward", "grad_norm", "completions/mean_length"):  # the same answers sampled, the same updates
        combined, expected = _per_step(Path("runs/cut"), key), _per_step(straight.run_dir, key)
        assert torch.allclose(torch.tensor(combined), torch.tensor(expected), atol=1e-4), (key, combined, expected)


def test_eval_scores_each_model_with_the_rewards_it_trained_with(tmp_path, tiny_model_dir):
    result = train(load_recipe(parity_recipe(tmp_path, tiny_model_dir)), run_name="scored", live=False)
    (tmp_path / "parity.py").unlink()  # the snapshot's absolute path: eval must not depend on the folder it runs in
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "parity.py").write_text(PARITY, encoding="utf-8")
    snapshot = result.checkpoint_dir / "recipe.toml"
    snapshot.write_text(snapshot.read_text().replace(str(tmp_path / "parity.py"), str(tmp_path / "moved" / "parity.py")))
    shown = CliRunner().invoke(app, ["eval", str(result.checkpoint_dir), "--baseline", "--limit", "4",
                                     "--data", str(PROMPT_DATA / "validation.jsonl"),
                                     "--out", str(tmp_path / "report")], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "Rewards of greedy answers to 4 prompts" in shown.output
    for label in ("mean total reward (weighted, as trained)", "answers that ended their turn", "parity (mean where it",
                  "length_penalty (mean where it scored)"):
        assert label in shown.output, label
    report = json.loads((tmp_path / "report" / "eval.json").read_text())
    assert set(report["records"]) == {"base", "adapter"} and len(report["records"]["adapter"]) == 4
    row = report["records"]["adapter"][0]
    assert set(row) >= {"id", "answer", "parity", "length_penalty"} and row["parity"] in (0.0, 1.0)
    total = report["adapter"]["reward"]
    assert total == pytest.approx(sum(r["parity"] + r["length_penalty"] for r in report["records"]["adapter"]) / 4)


def test_a_reward_that_raises_stops_training_with_its_name(tmp_path, tiny_model_dir):
    (tmp_path / "bad.py").write_text("def bad(completions, answer, **kwargs):\n    return [float(a) for a in answer]\n"
                                     "def crash(completions, **kwargs):\n    raise ValueError('no score for you')\n",
                                     encoding="utf-8")
    recipe = load_recipe(grpo_recipe(tmp_path, tiny_model_dir, [{"path": "bad.py", "function": "crash"}]))
    with pytest.raises(RewardFailed, match=r"reward crash \(.*bad.py\) raised ValueError: no score for you "
                                           r"\(first prompt of the batch: '"):
        train(recipe, run_name="crash", live=False)


def test_the_model_card_and_runs_show_the_reward(tmp_path, tiny_model_dir):
    result = train(load_recipe(grpo_recipe(tmp_path, tiny_model_dir)), run_name="carded", live=False)
    card = (result.checkpoint_dir / "README.md").read_text(encoding="utf-8")
    assert "group relative policy optimization (GRPO)" in card and "| final mean reward |" in card
    listed = CliRunner().invoke(app, ["runs", "--json"])
    assert listed.exit_code == 0, listed.output
    run = next(r for r in json.loads(listed.output) if r["name"] == "carded")
    assert run["method"] == "grpo" and run["final_reward"] == pytest.approx(result.summary["last_reward"])


def test_the_guard_takes_what_trl_takes_and_reward_files_import_as_modules(tmp_path):
    import numpy as np

    prompts = [[{"role": "user", "content": "q"}]] * 3
    numbers = guarded(lambda **kwargs: [True, np.float32(0.5), np.int64(2)], "numbers", "mine.py")
    assert numbers(prompts=prompts, completions=chat("a", "b", "c"), completion_ids=[[1]] * 3) == [1.0, 0.5, 2.0]
    module = tmp_path / "typed.py"
    module.write_text("from __future__ import annotations\nfrom dataclasses import dataclass\n"
                      "from math import sqrt as root\n\n@dataclass\nclass Score:\n    value: float\n\n"
                      "try:\n    def score(completions, **kwargs):\n        return [Score(1.0).value] * len(completions)\n"
                      "except ImportError:\n    pass\n", encoding="utf-8")
    for name in ("score", "root"):  # defined in a try block; imported
        assert load_function(module, name) is not None


def test_eval_runs_async_rewards_and_passes_what_training_passes():
    from qlora4080.methods.grpo_eval import _values

    async def later(completions, trainer_state, log_metric, id, **kwargs):
        log_metric("x", 1.0)
        return [float(trainer_state.global_step)] * len(completions)

    reward = guarded(later, "later", "mine.py")
    result = reward(prompts=[[{"role": "user", "content": "q"}]], completions=chat("a"), completion_ids=[[1]],
                    trainer_state=__import__("transformers").TrainerState(), log_metric=lambda n, v: None, id=["r1"])
    assert _values(result) == [0.0]


def test_num_iterations_needs_grad_accum_1_and_prompts_eval_needs_a_grpo_run(tmp_path, tiny_model_dir, tiny_checkpoint):
    path = grpo_recipe(tmp_path, tiny_model_dir)
    with pytest.raises(QloraError, match="num_iterations = 2 reuses each batch of answers .* needs training.grad_accum = 1"):
        load_recipe(path, ["grpo.num_iterations=2", "training.grad_accum=2"])
    assert load_recipe(path, ["grpo.num_iterations=2"]).table(GRPOSection).num_iterations == 2
    refused = CliRunner().invoke(app, ["eval", str(tiny_checkpoint), "--data", str(PROMPT_DATA / "validation.jsonl"),
                                       "--out", str(tmp_path / "report")], env={"COLUMNS": "200"})
    assert refused.exit_code != 0 and "trained with training.method = 'sft'" in " ".join(refused.output.split())
