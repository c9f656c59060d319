"""A short real training run through TRL on a tiny random-weight model with SmolLM2's tokenizer."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from conftest import write_recipe

from qlora4080 import load_recipe, train
from qlora4080.errors import QloraError


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """Train once for the module: 6 steps, then keep the result and the base weights from disk."""
    from safetensors.torch import load_file

    work = tmp_path_factory.mktemp("run")
    recipe = load_recipe(write_recipe(work, str(tiny_model_dir), output={"checkpoints_dir": str(work / "checkpoints"), "runs_dir": str(work / "runs")}))
    result = train(recipe, run_name="tiny")
    base_on_disk = load_file(tiny_model_dir / "model.safetensors")
    return result, base_on_disk


def test_loss_is_finite_and_goes_down(trained):
    result, _ = trained
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in lines if "loss" in line]
    assert len(losses) == 6
    assert all(torch.isfinite(torch.tensor(losses)))
    # A random 2-layer model starts at ~ln(vocab) = 10.8; six LoRA steps must move it down steadily.
    assert losses[-1] < losses[0] - 0.2, losses
    assert all(later <= earlier + 0.05 for earlier, later in itertools.pairwise(losses)), losses
    assert result.summary["eval_loss"] < losses[0]


def test_lora_weights_change_and_base_weights_do_not(trained):
    result, base_on_disk = trained
    model = result.model
    lora_b = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b.values())  # lora_B starts at zero
    frozen = {n: p for n, p in model.named_parameters() if "lora_" not in n}
    assert not any(p.requires_grad for p in frozen.values())
    base_state = model.get_base_model().state_dict()
    compared = 0
    for name, tensor in base_on_disk.items():
        key = name if name in base_state else name.replace(".weight", ".base_layer.weight")
        if key in base_state:
            assert torch.equal(base_state[key].cpu(), tensor), name
            compared += 1
    assert compared >= len(base_on_disk) - 1  # everything (the tied lm_head may be stored once)


def test_checkpoint_has_adapter_tokenizer_template_recipe_and_logs(trained):
    result, _ = trained
    files = {p.name for p in result.checkpoint_dir.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "chat_template.jinja", "recipe.toml", "qlora4080.json"} <= files
    meta = json.loads((result.checkpoint_dir / "qlora4080.json").read_text())
    assert meta["backend"] == "hf" and meta["train_on"] == "assistant"
    assert {"train.log", "metrics.jsonl", "summary.json"} <= {p.name for p in result.run_dir.iterdir()}
    assert "step 6/6" in (result.run_dir / "train.log").read_text()
    assert load_recipe(result.checkpoint_dir / "recipe.toml").training.max_steps == 6


def test_saved_template_is_the_training_template(trained, smol_tokenizer):
    result, _ = trained
    saved = (result.checkpoint_dir / "chat_template.jinja").read_text()
    assert saved == smol_tokenizer.chat_template


def test_adapter_reloads_with_identical_logits_and_generates(trained):
    from qlora4080.infer import generate, load_for_chat

    result, _ = trained
    chat = load_for_chat(result.checkpoint_dir)
    ids = torch.tensor([result.tokenizer("Maria is 34 and lives in Lisbon.")["input_ids"]])
    result.model.eval()
    with torch.no_grad():
        expected = result.model(input_ids=ids).logits
        reloaded = chat.model(input_ids=ids).logits
        without = None
        with chat.model.disable_adapter():
            without = chat.model(input_ids=ids).logits
    assert torch.allclose(expected, reloaded, atol=1e-5)
    assert not torch.allclose(reloaded, without, atol=1e-4)  # the adapter matters
    answer = generate(chat, [{"role": "user", "content": "Hello"}], max_new_tokens=5)
    assert isinstance(answer, str)


def test_existing_run_is_not_overwritten(trained, tiny_model_dir):
    result, _ = trained
    recipe = load_recipe(write_recipe(result.checkpoint_dir.parent.parent, str(tiny_model_dir), output={
        "checkpoints_dir": str(result.checkpoint_dir.parent), "runs_dir": str(result.run_dir.parent)}))
    with pytest.raises(QloraError, match="already exists"):
        train(recipe, run_name="tiny")
    assert (result.checkpoint_dir / "adapter_model.safetensors").is_file()


def test_package_level_train_stays_callable_after_training(trained):
    """The training subpackage must not shadow qlora4080.train once its modules are imported."""
    import qlora4080
    import qlora4080.training.run

    assert callable(qlora4080.train) and qlora4080.train is qlora4080.training.run.train
