"""Device-aware defaults: one visible mapping from the recipe to the trainer's settings."""

from __future__ import annotations

from conftest import DEMO_RECIPE

from qlora4080.hardware import Hardware
from qlora4080.recipe import load_recipe
from qlora4080.training.config import build_sft_config, device_defaults

CPU = Hardware(device="cpu", cpu_count=2)
AMPERE = Hardware(device="cuda", gpu_name="RTX 4080", gpu_total_bytes=16 * 2**30, bf16_supported=True)
TURING = Hardware(device="cuda", gpu_name="Tesla T4", gpu_total_bytes=15 * 2**30, bf16_supported=False)


def test_cpu_gets_fp32_no_checkpointing_torch_adamw():
    d = device_defaults(load_recipe(DEMO_RECIPE), CPU)
    assert (d.bf16, d.fp16, d.gradient_checkpointing, d.optimizer) == (False, False, False, "adamw_torch")


def test_cuda_gets_bf16_or_fp16_and_checkpointing(monkeypatch):
    from qlora4080.training import config

    recipe = load_recipe(DEMO_RECIPE)
    monkeypatch.setattr(config, "has_module", lambda name: name == "bitsandbytes")
    d = device_defaults(recipe, AMPERE)
    assert (d.bf16, d.fp16, d.gradient_checkpointing, d.optimizer) == (True, False, True, "adamw_8bit")
    d = device_defaults(recipe, TURING)
    assert (d.bf16, d.fp16) == (False, True)
    monkeypatch.setattr(config, "has_module", lambda name: False)
    assert device_defaults(recipe, AMPERE).optimizer == "adamw_torch"


def test_recipe_overrides_device_defaults():
    recipe = load_recipe(DEMO_RECIPE, ["training.gradient_checkpointing=true", "training.optimizer=adamw_8bit"])
    d = device_defaults(recipe, CPU)
    assert d.gradient_checkpointing is True and d.optimizer == "adamw_8bit"
    assert device_defaults(load_recipe(DEMO_RECIPE, ["training.gradient_checkpointing=false"]), AMPERE).gradient_checkpointing is False


def test_sft_config_on_cpu_maps_every_recipe_value(tmp_path):
    recipe = load_recipe(DEMO_RECIPE, ["training.eval_steps=10"])
    config = build_sft_config(recipe, CPU, tmp_path, has_eval=True, backend="hf")
    t = recipe.training
    assert (config.max_steps, config.per_device_train_batch_size, config.gradient_accumulation_steps) == (t.max_steps, t.batch_size, t.grad_accum)
    assert (config.learning_rate, config.weight_decay, config.max_grad_norm, config.seed) == (t.learning_rate, t.weight_decay, t.max_grad_norm, t.seed)
    assert config.lr_scheduler_type == "cosine" and config.warmup_steps == t.warmup_ratio
    assert config.bf16 is False and config.gradient_checkpointing is False and config.use_cpu is True
    assert config.eval_strategy == "steps" and config.eval_steps == 10
    assert config.max_length == recipe.model.max_seq_len and config.packing is False
