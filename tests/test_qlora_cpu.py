"""The QLoRA path on the CPU: a 4-bit NF4 base (bitsandbytes' CPU backend) and 8-bit AdamW, through every command.

What is proven here, on the tiny model:
- backward through the frozen 4-bit layers is exact (the LoRA gradients equal those of an fp32 model holding
  the same dequantized weights), and stays exact after an evaluation or a generation in the middle of
  training (bitsandbytes repacks 4-bit weights for a faster CPU inference kernel that has no backward);
- `train` with load_in_4bit and adamw_8bit really trains a 4-bit base with 8-bit AdamW, and says so in
  train.log, summary.json and the checkpoint's metadata;
- Ctrl-C + --resume gives the losses of an uninterrupted run; eval, chat and generate load the 4-bit base;
- DPO and ORPO continue from the 4-bit SFT adapter; export --merged merges onto the 16-bit base.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import CLI, write_recipe

from qlora4080 import load_recipe, train
from qlora4080.training.interrupts import TrainingInterrupted

QLORA = ["model.load_in_4bit=true", "training.optimizer=adamw_8bit"]


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def _lora_gradients(model, batch) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def _quantized_and_dequantized(tiny_model_dir: Path):
    """The tiny model loaded 4-bit for training, and an fp32 twin whose linear weights are its dequantized NF4 weights."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit
    from transformers import AutoModelForCausalLM

    from qlora4080.backends import hf
    from qlora4080.hardware import Hardware
    from qlora4080.recipe import LoraSection, ModelSection

    lora = LoraSection(r=8, alpha=16, dropout=0.0)
    quantized, tokenizer = hf.load_model(ModelSection(name=str(tiny_model_dir), load_in_4bit=True), Hardware(device="cpu"))
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in quantized.modules())
    twin = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    twin_modules = dict(twin.named_modules())
    for name, module in quantized.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            twin_modules[name].weight.data = dequantize_4bit(module.weight.data, module.weight.quant_state).float()
    quantized = hf.attach_lora(quantized, lora, seed=0)
    twin = hf.attach_lora(twin, lora, seed=0)
    # LoRA B starts at zero, which would hide any error in the gradient reaching the layers below: start both at
    # the same random B.
    torch.manual_seed(1)
    for (name, p), (twin_name, q) in zip(quantized.named_parameters(), twin.named_parameters(), strict=True):
        assert name == twin_name
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
            q.data.copy_(p.data)
    batch = tokenizer(["Maria is 34 and lives in Lisbon.", "Tom, 51, is a baker."], return_tensors="pt", padding=True)
    return quantized, twin, dict(batch)


def test_backward_through_4bit_layers_is_exact(tiny_model_dir):
    quantized, twin, batch = _quantized_and_dequantized(tiny_model_dir)
    expected = _lora_gradients(twin, batch)
    got = _lora_gradients(quantized, batch)
    first_layer = next(name for name in got if "layers.0." in name and "lora_A" in name)
    assert expected[first_layer].abs().sum() > 0  # the lowest LoRA gets its gradient through every 4-bit layer above
    for name, gradient in got.items():
        assert torch.allclose(gradient, expected[name], rtol=1e-3, atol=1e-6), name


def test_an_evaluation_in_the_middle_of_training_keeps_backward_exact(tiny_model_dir):
    """An eval-mode forward without gradients (evaluation, generation) must not change what backward computes.

    bitsandbytes (0.50) repacks a 4-bit weight for its AVX512-BF16 inference kernel on such a forward, for good,
    and that kernel has no backward: the LoRA layers below the last then got (nearly) no gradient. The training
    loader switches the repacking off.
    """
    from bitsandbytes.functional import has_avx512bf16

    quantized, _, batch = _quantized_and_dequantized(tiny_model_dir)
    before = _lora_gradients(quantized, batch)
    quantized.eval()
    with torch.no_grad():
        quantized(**batch)
    after = _lora_gradients(quantized, batch)
    for name, gradient in before.items():
        assert torch.allclose(after[name], gradient, rtol=1e-5, atol=1e-7), name
    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16, so bitsandbytes never repacks here: only the equality above ran")


@pytest.fixture(scope="module")
def qlora_checkpoint(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`qlora4080 train` on a 4-bit base with 8-bit AdamW, through the command line."""
    work = tmp_path_factory.mktemp("qlora-run")
    recipe = write_recipe(work, str(tiny_model_dir), training={"max_steps": 4, "eval_steps": 2},
                          output={"checkpoints_dir": str(work / "checkpoints"), "runs_dir": str(work / "runs")})
    done = subprocess.run([*CLI, "train", str(recipe), "--run-name", "q4", *(f"--set={item}" for item in QLORA)],
                          capture_output=True, text=True, timeout=900, cwd=work)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return work / "checkpoints" / "q4"


def test_train_says_it_trained_a_4bit_base_with_8bit_adamw(qlora_checkpoint):
    run_dir = qlora_checkpoint.parent.parent / "runs" / "q4"
    log = (run_dir / "train.log").read_text()
    assert "model: 4-bit NF4 linear layers (bitsandbytes), float32 compute on cpu" in log
    assert "optimizer: adamw_8bit; gradient checkpointing: off; packing: off; padding-free: off" in log
    plan = json.loads((run_dir / "summary.json").read_text())["plan"]
    assert plan == {"backend": "hf", "device": "cpu", "compute_dtype": "float32", "quantization": "nf4",
                    "optimizer": "adamw_8bit", "gradient_checkpointing": False, "packing": False, "padding_free": False}
    meta = json.loads((qlora_checkpoint / "qlora4080.json").read_text())
    assert meta["load_in_4bit"] is True
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(losses) == 4 and losses[-1] < losses[0]
    # the optimizer the trainer saved is bitsandbytes' 8-bit one: uint8 states
    state = torch.load(qlora_checkpoint / "checkpoint-4" / "optimizer.pt", weights_only=False)["state"]
    assert {value.dtype for entry in state.values() for key, value in entry.items() if key == "state1"} <= {torch.uint8}


def test_chat_eval_and_generate_use_the_4bit_checkpoint(qlora_checkpoint, tmp_path):
    import bitsandbytes as bnb

    from qlora4080.infer import load_for_chat

    chat = load_for_chat(qlora_checkpoint)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in chat.model.modules())  # rebuilt as it was trained
    answered = _run("chat", str(qlora_checkpoint), "--prompt", "Maria is 34 and lives in Lisbon.", "--max-new-tokens", "4")
    assert answered.returncode == 0, answered.stderr
    evaluated = _run("eval", str(qlora_checkpoint), "--limit", "3", "--max-new-tokens", "4")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "perplexity" in evaluated.stdout
    prompts, answers = tmp_path / "prompts.jsonl", tmp_path / "answers.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Tom, 51, is a baker from Oslo."}\n')
    generated = _run("generate", str(qlora_checkpoint), "-i", str(prompts), "-o", str(answers), "--max-new-tokens", "4")
    assert generated.returncode == 0, generated.stderr
    assert json.loads(answers.read_text())["id"] == "a"


def test_interrupted_4bit_run_resumes_with_the_losses_of_an_uninterrupted_one(tmp_path, tiny_model_dir):
    from test_resume import SigintAt, _losses

    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), lora={"dropout": 0.0},
                                      training={"max_steps": 4, "save_steps": 2, "logging_steps": 1}), QLORA)
    expected = _losses(train(recipe, run_name="straight", live=False).run_dir)
    with pytest.raises(TrainingInterrupted):
        train(recipe, run_name="cut", live=False, callbacks=[SigintAt(2)])
    resumed = train(recipe, run_name="cut", resume=True, live=False)
    assert resumed.summary["steps"] == 4
    assert torch.allclose(torch.tensor(_losses(Path("runs/cut"))), torch.tensor(expected), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_preference_tuning_continues_from_the_4bit_sft_adapter(tmp_path, tiny_model_dir, qlora_checkpoint, method):
    import bitsandbytes as bnb
    from test_preference_training import dpo_recipe

    recipe = load_recipe(dpo_recipe(tmp_path, tiny_model_dir, max_steps=2, method=method),
                         [*QLORA, f"model.adapter={json.dumps(str(qlora_checkpoint))}"])
    result = train(recipe, run_name=f"{method}-q4", live=False)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in result.model.modules())
    assert result.summary["plan"]["quantization"] == "nf4" and result.summary["plan"]["optimizer"] == "adamw_8bit"
    assert all(torch.isfinite(torch.tensor(result.summary["last_loss"])) for _ in [0])


def test_export_merges_the_4bit_adapter_onto_the_16bit_base(qlora_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    done = _run("export", str(qlora_checkpoint), "--merged", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert next(merged.parameters()).dtype == torch.float32  # 16-bit (fp32 on a CPU), never 4-bit
    record = json.loads((out / "qlora4080_export.json").read_text())
    assert record["trained_on_4bit"] is True
    assert 0 <= record["agreement_with_4bit_model"]["same_answers"] <= record["agreement_with_4bit_model"]["prompts"]
