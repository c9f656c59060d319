"""transformers + peft: CPU in fp32, CUDA in bf16/fp16, with bitsandbytes NF4 (CPU or CUDA) when asked.

With several processes (torchrun, accelerate launch) each process loads the whole
model onto its own GPU (LOCAL_RANK); under FSDP the 4-bit weights are stored in
the compute dtype so FSDP can shard them with the rest (peft's FSDP+QLoRA recipe).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..console import warn
from ..distributed import sharding_strategy
from ..errors import QloraError
from ..hardware import Hardware
from ..hub import cache_only_unless_reachable, hub_host
from ..plan import model_loading
from ..recipe import LoraSection, ModelSection
from .loading import device_map, load_tokenizer, model_source

if TYPE_CHECKING:
    from ..model_types import Model, Tokenizer

ALL_LINEAR = "all-linear"


def load_model(
    model_cfg: ModelSection, hardware: Hardware, *, for_training: bool = True, template_path: Path | None = None
) -> tuple[Model, Tokenizer]:
    """Base model + tokenizer, placed on the device, ready for LoRA (or inference).

    4-bit NF4 loads through bitsandbytes on a CUDA card and on a CPU alike (plan.model_loading decides).
    """
    import torch
    from transformers import AutoModelForCausalLM

    loading = model_loading(model_cfg, hardware)
    for note in loading.notes:
        warn(note)
    source = model_source(model_cfg.name)
    dtype = getattr(torch, loading.compute_dtype)
    kwargs: dict[str, object] = {"dtype": dtype, "trust_remote_code": model_cfg.trust_remote_code}
    sharded = sharding_strategy() == "FSDP"
    if loading.quantization == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
            # FSDP flattens each unit's parameters into one tensor of one dtype: the packed 4-bit weights
            # must then be stored in the dtype of the parameters around them (None: bitsandbytes' uint8)
            bnb_4bit_quant_storage=dtype if sharded else None,
        )
    if hardware.is_cuda:
        kwargs["device_map"] = device_map()
    elif loading.quantization:
        kwargs["device_map"] = {"": "cpu"}  # bitsandbytes quantizes while the weights are placed
    with cache_only_unless_reachable() as online:
        try:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except OSError as exc:
            raise _load_error(model_cfg.name, exc, online) from exc
    tokenizer = load_tokenizer(source, model_cfg, template_path)
    if for_training:
        model.config.use_cache = False
        if loading.quantization and not sharded:  # it casts the other weights to fp32: FSDP needs them in the storage dtype
            from peft import prepare_model_for_kbit_training

            # gradient checkpointing is turned on later by the trainer config
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if loading.quantization:
            keep_4bit_backward_exact(model)
    return model, tokenizer


def keep_4bit_backward_exact(model: Model) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference in a model that trains.

    On a CPU with AVX512-BF16, a Linear4bit's first forward in eval mode without gradients (an evaluation
    during training, a sample generation, DPO's reference log-probabilities) repacks its weight for a
    faster inference kernel, for good. That kernel has no backward: every later training step then passes
    no gradient through the frozen 4-bit layers, so each LoRA below the last layer stops learning, and
    nothing says so (measured: the first layer's LoRA gradient fell from 0.127 to 0.0004 after one such
    forward; tests/test_qlora_cpu.py). Training keeps the exact dequantizing kernel; chat, eval and
    generate, which load without this, keep the fast one.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def attach_lora(model: Model, lora: LoraSection, *, seed: int, gradient_checkpointing: bool = False) -> Model:
    """Wrap the base in a fresh LoRA adapter; only adapter weights train.

    Checkpointing on this backend is the trainer's job (training/config.py turns it on), so the flag is unused here.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    set_seed(seed)  # LoRA A matrices start random
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise QloraError(
            f"LoRA could not attach: {exc}",
            where="[lora] target_modules",
            hint='use "all-linear" or names of linear layers of this model (e.g. q_proj, v_proj)',
        ) from exc


def _load_error(name: str, exc: Exception, online: bool = True) -> QloraError:
    if Path(name).expanduser().exists():
        return QloraError(f"could not load the model in {name}: {exc}", where="[model] name")
    reason = exc if online else f"{hub_host()} cannot be reached from this machine and the model is not in the local cache"
    return QloraError(
        f"could not load model '{name}': {reason}",
        where="[model] name",
        hint="hub models need network access the first time; without it, point model.name at a local "
        "directory with config.json + weights, or use builtin:smollm2-135m-instruct",
    )
