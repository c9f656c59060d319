"""The peer row: the plain script a user would write from TRL + peft + bitsandbytes defaults.

BitsAndBytesConfig NF4 (bf16 compute, as every QLoRA example sets it),
LoraConfig on all linear layers with the same rank/alpha/dropout as the
project's adapter, and SFTConfig defaults (TRL's learning rate, optimizer,
bf16, gradient checkpointing, fused loss) except the shape: batch 1 x
grad-accum 16, max_length, max_steps. Same model, data and clock as the
backend cases. Two additions for measuring: logging_steps=1 (a loss per step)
and logging_nan_inf_filter=False (a NaN shows as NaN).

On a CPU (--tiny) the script needs what any CPU run needs: use_cpu=True,
bf16=False, no checkpointing, the model in fp32 without 4-bit, and
transformers' own loss, because trl 1.15 computes its loss with a Triton
kernel that cannot run there (the same fallback the project's trainer takes).
"""

from __future__ import annotations

from typing import Any

from . import measure, models
from .backend_case import BATCH_SIZE, LORA, CaseOptions, trainer_settings
from .record import CaseRecord


def run_peer_case(opts: CaseOptions, record: CaseRecord) -> None:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig

    from qlora4080.quiet import quiet_libraries
    from qlora4080.training.compat import fused_loss_usable
    from qlora4080.vram import TrainingShape

    quiet_libraries()
    cuda = torch.cuda.is_available()
    with record.step("load model (4-bit)"):
        tokenizer = AutoTokenizer.from_pretrained(opts.model_dir)
        if cuda:
            compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)
            model = AutoModelForCausalLM.from_pretrained(opts.model_dir, quantization_config=quantization, device_map={"": 0})
        else:
            model = AutoModelForCausalLM.from_pretrained(opts.model_dir, dtype=torch.float32)
    record.data["quantized_4bit"] = bool(getattr(model, "is_loaded_in_4bit", False))
    record.data["allocated_after_load_gib"] = measure.allocated_gib(cuda)
    with record.step("train"):
        cpu_only = {} if cuda else {"use_cpu": True, "bf16": False, "gradient_checkpointing": False}
        config = SFTConfig(output_dir=str(opts.work / "trainer"), per_device_train_batch_size=BATCH_SIZE,
                           gradient_accumulation_steps=opts.grad_accum, max_length=opts.seq_len, max_steps=opts.steps,
                           logging_steps=1, logging_nan_inf_filter=False, report_to="none", **cpu_only)
        lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules="all-linear",
                          task_type="CAUSAL_LM")
        dataset = measure.synthetic_dataset(opts.steps * BATCH_SIZE * opts.grad_accum, opts.seq_len, len(tokenizer))
        clock = measure.step_clock(cuda)
        fused = fused_loss_usable(model)
        trainer = trainer_class(fused)(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                                       peft_config=lora, callbacks=[clock])
        trainer.remove_callback(PrinterCallback)
        record.data["trainable_parameters"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        measure.reset_peak(cuda)
        trainer.train()
        record.data.update(measure.peak_memory(cuda))
        record.data.update(measure.timing(clock, BATCH_SIZE * opts.grad_accum * opts.seq_len))
        record.data["trainer"] = trainer_settings(config, fused, "trl SFTTrainer" if fused else "trl SFTTrainer, Trainer.compute_loss")
        record.data["loss_path"] = measure.loss_path(trainer, trainer.model)
    record.verdict("train", record.data["losses_finite"], f"losses per step: {record.data['losses']}")
    with record.check("estimate"):
        numbers = models.architecture(opts.arch, opts.tiny, model.config.vocab_size)
        shape = TrainingShape(batch_size=BATCH_SIZE, seq_len=opts.seq_len, load_in_4bit=cuda, weight_bytes=2 if cuda else 4,
                              lora_r=LORA["r"], gradient_checkpointing=bool(config.gradient_checkpointing),
                              optimizer=record.data["trainer"]["optim"], backend="hf")
        record.data.update(measure.estimate_fields(numbers, shape, record.data.get("peak_reserved_gib")))


def trainer_class(fused_loss: bool) -> Any:
    """SFTTrainer as is where its fused loss can run; else the smallest subclass that takes transformers' loss."""
    from transformers import Trainer
    from trl import SFTTrainer

    if fused_loss:
        return SFTTrainer

    class PlainLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
            inputs["use_cache"] = False
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    return PlainLossSFTTrainer
