"""Checks on a trained adapter: packing, save/reload, the chat loader, and merge + export.

Each returns plain numbers and a `pass` verdict with the tolerance it used;
the case decides what to do with a failure (record it, go on).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

from . import measure

# Tolerances on a max |logit difference|, scaled by max(1, max |logit|): fp32 paths
# only reorder sums; bf16 paths round every matmul to 8 mantissa bits.
TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 2e-2}


def tolerance(dtype_name: str, reference: Any) -> float:
    return TOLERANCE.get(dtype_name, 5e-2) * max(1.0, float(reference.abs().max()))


def packing_check(model: Any, tokenizer: Any, seq_len: int, dtype_name: str, id_limit: int) -> dict[str, Any]:
    """A pair packed with the project's block-diagonal mask must give each sample's logits alone.

    Two contrasts say what the number means: the same pair as one plain
    sequence (no mask, positions running on: what packing without separation
    computes, so the size of a leak), and the pair with restarting position ids
    but no mask (transformers may or may not find the boundaries from those
    alone; recorded, not judged). Then one forward/backward on the packed batch
    in train mode must give a finite loss and finite LoRA gradients. On CUDA
    all of it runs under bf16/fp16 autocast, as the trainer runs it.
    """
    import torch

    from qlora4080.data.packing import PackedCollator, pack_rows

    lengths = (seq_len * 3 // 8, seq_len // 4)
    samples = [measure.random_batch(1, n, id_limit, seed=10 + i)[0].tolist() for i, n in enumerate(lengths)]
    packed = pack_rows([{"input_ids": s, "labels": s} for s in samples], seq_len)
    assert len(packed) == 1, f"the pair should fit one row of {seq_len}"
    dtype = getattr(torch, dtype_name)
    batch = PackedCollator(tokenizer.pad_token_id, dtype=dtype)(packed)
    batch.pop("packed_tokens")
    device = model.device
    batch = {k: v.to(device) for k, v in batch.items()}
    autocast = torch.autocast("cuda", dtype=dtype) if device.type == "cuda" and dtype_name != "float32" else nullcontext()
    ids, positions = batch["input_ids"], batch["position_ids"]
    model.eval()
    with torch.inference_mode(), autocast:
        variants = {
            "block_mask": model(input_ids=ids, attention_mask=batch["attention_mask"], position_ids=positions).logits[0].float(),
            "position_ids_only": model(input_ids=ids, position_ids=positions).logits[0].float(),
            "plain_sequence": model(input_ids=ids).logits[0].float(),
        }
        # pack_rows keeps dataset order inside a row; only the second sample can see across the boundary
        first = len(samples[0])
        alone = model(input_ids=torch.tensor([samples[1]], device=device)).logits[0].float()
        first_alone = model(input_ids=torch.tensor([samples[0]], device=device)).logits[0].float()
    diffs = {name: float((logits[first:] - alone).abs().max()) for name, logits in variants.items()}
    diffs["block_mask"] = max(diffs["block_mask"], float((variants["block_mask"][:first] - first_alone).abs().max()))
    tol = tolerance(dtype_name, alone)
    model.train()
    with autocast:
        loss = model(**batch).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n and p.grad is not None]
    grads_finite = bool(grads) and all(bool(torch.isfinite(g).all()) for g in grads)
    model.zero_grad(set_to_none=True)
    model.eval()
    loss_value = float(loss.detach())
    diff, leak = diffs["block_mask"], diffs["plain_sequence"]
    return {"lengths": list(lengths), "dtype": dtype_name, "max_diff": diff, "max_diff_plain_sequence": leak,
            "max_diff_position_ids_only": diffs["position_ids_only"], "tolerance": tol, "loss": loss_value,
            "lora_grads": len(grads), "grads_finite": grads_finite,
            "pass": diff <= tol and diff < leak and grads_finite and torch.isfinite(torch.tensor(loss_value)).item()}


def adapter_snapshot(model: Any) -> dict[str, Any]:
    """LoRA weights as trained (fp32 copies on the CPU) and the dtype each had."""
    return {n: (p.detach().float().cpu(), p.dtype) for n, p in model.named_parameters() if "lora_" in n}


def load_adapter(base: Any, adapter_dir: Path, trained: dict[str, Any]) -> tuple[Any, float]:
    """PeftModel.from_pretrained on a fresh base, compared with the trained adapter (see match_trained)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, adapter_dir)
    return model, match_trained(model, trained)


def match_trained(model: Any, trained: dict[str, Any]) -> float:
    """Cast the reloaded LoRA weights to the dtypes training held; the largest difference to the trained ones.

    trl casts QLoRA adapters to bf16 while peft loads them as fp32; casting back
    makes the comparison about what was saved, not about two precisions.
    """
    worst, seen = 0.0, 0
    for name, param in model.named_parameters():
        if name in trained:
            weights, dtype = trained[name]
            param.data = param.data.to(dtype)
            worst = max(worst, float((param.detach().float().cpu() - weights).abs().max()))
            seen += 1
    if seen != len(trained):
        raise RuntimeError(f"the reloaded adapter has {seen} of the {len(trained)} trained LoRA tensors")
    model.eval()
    return worst


def chat_path_check(adapter_dir: Path, before: dict[str, Any]) -> dict[str, Any]:
    """What `qlora4080 chat` loads (infer.load_for_chat: a fresh base, the adapter as peft loads it) vs the trained model.

    On the hf path the chat loader skips prepare_model_for_kbit_training (norms
    stay 16-bit) and keeps peft's fp32 adapter, so small logit differences are
    expected; the number says how small.
    """
    from qlora4080.infer import load_for_chat

    from .record import release_memory

    chat = load_for_chat(adapter_dir)
    ids = measure.greedy_ids(chat.model, before["prompt_ids"], chat.tokenizer.pad_token_id)
    diff = measure.max_diff(measure.logits(chat.model, before["prompt_ids"]), before["logits"])
    del chat
    release_memory()
    return {"tokens_equal": ids == before["tokens"], "max_logit_diff": diff, "tokens": ids}


def merge_check(adapter_dir: Path, merged_dir: Path, model_dir: str, id_limit: int) -> dict[str, Any]:
    """The project's export (qlora4080.export.export_merged), then logits of base + adapter vs the merged model.

    export_merged reloads the base in 16-bit (fp32 on CPU), merges with peft's
    merge_and_unload, saves safetensors, reloads them with plain transformers
    and compares one greedy answer. Here the same two models are also compared
    on one batch of random tokens, which says more than an answer can.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from qlora4080.backends import hf
    from qlora4080.export import export_merged
    from qlora4080.hardware import detect
    from qlora4080.plan import compute_dtype
    from qlora4080.recipe import ModelSection

    from .record import release_memory

    exported = export_merged(adapter_dir, merged_dir, prompt=measure.PROMPT, max_new_tokens=measure.NEW_TOKENS)
    hardware = detect()
    dtype_name = compute_dtype("auto", hardware)
    batch = measure.random_batch(2, 64, id_limit, seed=3)
    base, _ = hf.load_model(ModelSection(name=model_dir, load_in_4bit=False), hardware, for_training=False)
    with_adapter = PeftModel.from_pretrained(base, adapter_dir).eval()
    reference = measure.logits(with_adapter, batch)
    del with_adapter, base
    release_memory()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=getattr(torch, dtype_name))
    if hardware.is_cuda:
        merged = merged.to("cuda")
    diff = measure.max_diff(reference, measure.logits(merged.eval(), batch))
    del merged
    release_memory()
    tol = tolerance(dtype_name, reference)
    return {"method": "qlora4080.export.export_merged (peft merge_and_unload on a 16-bit base), then logits of "
                      "base+adapter vs the saved merged model on one 2x64 batch",
            "dtype": dtype_name, "answers_match": exported.answers_match, "max_logit_diff": diff, "tolerance": tol,
            "pass": diff <= tol}
