"""Device-aware defaults: one resolved plan, and one visible mapping from the recipe and the plan to the trainer."""

from __future__ import annotations

import pytest
from conftest import DEMO_RECIPE

from qlora4080.errors import QloraError
from qlora4080.hardware import Hardware
from qlora4080.plan import resolve_plan
from qlora4080.recipe import load_recipe
from qlora4080.training.config import build_sft_config, trainer_arguments

CPU = Hardware(device="cpu", cpu_count=2)
AMPERE = Hardware(device="cuda", gpu_name="RTX 4080", gpu_total_bytes=16 * 2**30, bf16_supported=True)
TURING = Hardware(device="cuda", gpu_name="Tesla T4", gpu_total_bytes=15 * 2**30, bf16_supported=False)


def test_cpu_gets_fp32_no_checkpointing_torch_adamw():
    plan = resolve_plan(load_recipe(DEMO_RECIPE), CPU, "hf")
    assert (plan.bf16, plan.fp16, plan.gradient_checkpointing, plan.optimizer) == (False, False, False, "adamw_torch")
    assert plan.loading.compute_dtype == "float32" and plan.padding_free is False


def test_cuda_gets_bf16_or_fp16_and_checkpointing(monkeypatch):
    from qlora4080 import plan as plan_module

    recipe = load_recipe(DEMO_RECIPE)
    monkeypatch.setattr(plan_module, "has_module", lambda name: name == "bitsandbytes")
    plan = resolve_plan(recipe, AMPERE, "hf")
    assert (plan.bf16, plan.fp16, plan.gradient_checkpointing, plan.optimizer) == (True, False, True, "adamw_8bit")
    plan = resolve_plan(recipe, TURING, "hf")
    assert (plan.bf16, plan.fp16) == (False, True)
    monkeypatch.setattr(plan_module, "has_module", lambda name: False)
    assert resolve_plan(recipe, AMPERE, "hf").optimizer == "adamw_torch"


def test_recipe_overrides_device_defaults():
    recipe = load_recipe(DEMO_RECIPE, ["training.gradient_checkpointing=true", "training.optimizer=adamw_8bit"])
    plan = resolve_plan(recipe, CPU, "hf")
    assert plan.gradient_checkpointing is True and plan.optimizer == "adamw_8bit"
    recipe = load_recipe(DEMO_RECIPE, ["training.gradient_checkpointing=false"])
    assert resolve_plan(recipe, AMPERE, "hf").gradient_checkpointing is False


def test_4bit_is_nf4_on_the_cpu_too():
    """bitsandbytes quantizes on the CPU: a recipe asking for 4-bit gets it there, and the plan says so."""
    plan = resolve_plan(load_recipe(DEMO_RECIPE, ["model.load_in_4bit=true"]), CPU, "hf")
    assert plan.loading.quantization == "nf4" and plan.loading.load_in_4bit
    assert plan.log_lines()[0] == "model: 4-bit NF4 linear layers (bitsandbytes), float32 compute on cpu"
    assert plan.summary_fields()["quantization"] == "nf4"


def test_missing_bitsandbytes_is_said_not_hidden(monkeypatch):
    from qlora4080 import plan as plan_module

    monkeypatch.setattr(plan_module, "has_module", lambda name: False)
    plan = resolve_plan(load_recipe(DEMO_RECIPE, ["model.load_in_4bit=true"]), CPU, "hf")
    assert plan.loading.quantization is None
    assert any("bitsandbytes is not installed" in line for line in plan.log_lines())
    with pytest.raises(QloraError, match="adamw_8bit needs bitsandbytes"):
        resolve_plan(load_recipe(DEMO_RECIPE, ["training.optimizer=adamw_8bit"]), CPU, "hf")


def test_unsloth_refuses_packing_in_the_plan():
    with pytest.raises(QloraError, match="packing"):
        resolve_plan(load_recipe(DEMO_RECIPE, ["data.packing=true"]), AMPERE, "unsloth")


def test_preflight_and_trainer_read_one_plan(tmp_path, monkeypatch):
    """The estimate's optimizer is the trainer's optimizer (they used to disagree without bitsandbytes)."""
    from qlora4080 import plan as plan_module
    from qlora4080.preflight import run_preflight

    recipe = load_recipe(DEMO_RECIPE)
    for installed in (True, False):
        monkeypatch.setattr(plan_module, "has_module", lambda name, installed=installed: installed)
        plan = resolve_plan(recipe, AMPERE, "hf")
        arguments = trainer_arguments(recipe, plan, tmp_path, has_eval=False)  # SFTConfig refuses bf16 without a GPU
        report = run_preflight(recipe, AMPERE, "hf", offline=True)
        assert report.estimate is not None
        assert arguments["optim"] == plan.optimizer and arguments["bf16"] is True
        assert f"optimizer states ({plan.optimizer})" in report.estimate.parts


def test_sft_config_on_cpu_maps_every_recipe_value(tmp_path):
    recipe = load_recipe(DEMO_RECIPE, ["training.eval_steps=10"])
    config = build_sft_config(recipe, resolve_plan(recipe, CPU, "hf"), tmp_path, has_eval=True)
    t = recipe.training
    assert (config.max_steps, config.per_device_train_batch_size, config.gradient_accumulation_steps) == (t.max_steps, t.batch_size, t.grad_accum)
    assert (config.learning_rate, config.weight_decay, config.max_grad_norm, config.seed) == (t.learning_rate, t.weight_decay, t.max_grad_norm, t.seed)
    assert config.lr_scheduler_type == "cosine" and config.warmup_steps == t.warmup_ratio
    assert config.bf16 is False and config.gradient_checkpointing is False and config.use_cpu is True
    assert config.eval_strategy == "steps" and config.eval_steps == 10
    assert config.max_length == recipe.model.max_seq_len and config.packing is False and config.padding_free is False


def test_the_summary_puts_the_estimate_beside_the_measured_peaks_on_cuda(monkeypatch):
    """summary.json: on a CUDA card the preflight's estimate sits next to the peaks it predicted; on a CPU it is left
    out, since it is a 16 GB card's estimate and the peak there is the process's RAM."""
    from types import SimpleNamespace

    from qlora4080 import hardware as hardware_module
    from qlora4080.training.summary import build_summary

    GiB = 2**30
    monkeypatch.setattr(hardware_module, "memory_snapshot", lambda hw: (
        {"allocated": 3 * GiB, "reserved": 4 * GiB, "peak": 5 * GiB, "peak_reserved": 6 * GiB, "card_used": 7 * GiB,
         "card_total": 16 * GiB} if hw.is_cuda else {"rss": GiB, "peak": 2 * GiB}))
    trainer = SimpleNamespace(state=SimpleNamespace(log_history=[{"loss": 2.0}, {"loss": 1.5}]), tokens_seen=10, trained_tokens_seen=5,
                              args=SimpleNamespace(world_size=1, per_device_train_batch_size=1, gradient_accumulation_steps=16),
                              callback_handler=SimpleNamespace(callbacks=[]))
    parts = {"dirs": SimpleNamespace(name="run"), "output": SimpleNamespace(global_step=2, training_loss=1.75), "history": [],
             "train_split": SimpleNamespace(tokens=100, trained_tokens=40), "eval_metrics": {}, "timings": {}, "started": 0.0,
             "trainer": trainer, "plan": SimpleNamespace(summary_fields=dict)}
    on_card = build_summary(hardware=AMPERE, estimate_gib=6.4, **parts)
    assert (on_card["peak_memory_gib"], on_card["peak_reserved_gib"], on_card["estimated_memory_gib"]) == (5.0, 6.0, 6.4)
    on_cpu = build_summary(hardware=CPU, estimate_gib=None, **parts)
    assert on_cpu["peak_memory_gib"] == 2.0 and "peak_reserved_gib" not in on_cpu and "estimated_memory_gib" not in on_cpu
