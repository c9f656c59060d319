"""The backends declare what they can do (backend_capabilities.py), and each declaration is what the code does.

Callers ask a capability, never a backend's name; this test keeps the table
honest: every backend it lists is a module implementing the Backend interface,
the recipe's choices are its names, and each claim changes what the plan, the
trainer arguments, the launch checks, the adapter loading and the memory
estimate do.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import types
from typing import get_args

import pytest
from conftest import write_recipe

from qlora4080 import load_recipe
from qlora4080.backend_capabilities import BACKENDS, Capabilities, backends_that, capabilities
from qlora4080.backends import BACKEND_FUNCTIONS, Backend, BackendName, load_backend
from qlora4080.errors import QloraError
from qlora4080.hardware import Hardware
from qlora4080.plan import resolve_plan


def test_the_table_names_the_backends_the_types_and_the_recipe_know():
    assert tuple(BACKENDS) == get_args(BackendName)


@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_backend_module_implements_the_interface(name):
    import importlib

    module = importlib.import_module(f"qlora4080.backends.{name}")  # the module, not unsloth itself: it loads late
    for function in BACKEND_FUNCTIONS:
        ours = inspect.signature(getattr(module, function)).parameters
        interface = [p for p in inspect.signature(getattr(Backend, function)).parameters if p != "self"]
        assert [p for p in ours if p in interface] == interface, (name, function)  # every one, in order
        extra = [p for p in ours.values() if p.name not in interface]
        assert all(p.default is not inspect.Parameter.empty for p in extra), (name, function, extra)  # callers omit them


def test_a_module_that_does_not_implement_the_interface_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "qlora4080.backends.broken", types.ModuleType("qlora4080.backends.broken"))
    monkeypatch.setattr("qlora4080.backends.BACKEND_NAMES", ("hf", "unsloth", "broken"))
    with pytest.raises(TypeError, match="backends.broken does not implement load_model, attach_lora"):
        load_backend("broken")


def test_the_recipe_offers_exactly_the_declared_backends(tmp_path, tiny_model_dir):
    path = write_recipe(tmp_path, str(tiny_model_dir))
    with pytest.raises(QloraError, match="Input should be 'auto', 'hf' or 'unsloth'"):
        load_recipe(path, ["model.backend=tpu"])
    for name in BACKENDS:
        assert load_recipe(path, [f"model.backend={name}"]).model.backend == name


def _variants() -> list[tuple[str, Capabilities]]:
    """Each real backend's claims, and each with every yes/no claim flipped: behaviour must follow the claim."""
    flipped = {field.name for field in dataclasses.fields(Capabilities) if field.type in ("bool", bool)}
    variants = []
    for name, declared in BACKENDS.items():
        variants.append((name, declared))
        variants.append((f"{name}-flipped", dataclasses.replace(
            declared, logits_bytes=declared.logits_bytes + 1, **{claim: not getattr(declared, claim) for claim in flipped})))
    return variants


@pytest.mark.parametrize("name, declared", _variants(), ids=lambda value: value if isinstance(value, str) else "")
def test_callers_follow_the_declared_claims_not_the_name(name, declared, tmp_path, tiny_model_dir, monkeypatch):
    from qlora4080.architectures import lookup
    from qlora4080.distributed import check_sharding_supported
    from qlora4080.training.config import trainer_arguments
    from qlora4080.vram import TrainingShape, estimate

    monkeypatch.setitem(BACKENDS, name, declared)  # a backend the code has never heard of by name
    cpu = Hardware(device="cpu")
    packed = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), data={"packing": True}))
    if declared.packs_rows:
        assert resolve_plan(packed, cpu, name).packing  # type: ignore[arg-type]
    else:
        with pytest.raises(QloraError, match=f"data.packing = true is not supported with the {name} backend"):
            resolve_plan(packed, cpu, name)  # type: ignore[arg-type]

    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), training={"gradient_checkpointing": True}))
    arguments = trainer_arguments(recipe, resolve_plan(recipe, cpu, name), tmp_path / "out", has_eval=False)  # type: ignore[arg-type]
    assert arguments["gradient_checkpointing"] is (not declared.owns_gradient_checkpointing)

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    if declared.shardable:
        check_sharding_supported(name)
    else:
        with pytest.raises(QloraError, match=f"the {name} backend does not support FSDP"):
            check_sharding_supported(name)

    arch = lookup("Qwen/Qwen3-4B-Instruct-2507")
    assert arch is not None
    parts = estimate(arch, TrainingShape(batch_size=1, seq_len=1024, backend=name)).parts
    assert parts["logits and loss"] == 1024 * arch.vocab * declared.logits_bytes
    assert any("fp32: peft upcasts" in label for label in parts) is (not declared.keeps_embeddings_16bit)


def test_the_gradient_checkpointing_claim_matches_what_attach_lora_does():
    """A backend that owns checkpointing applies it in attach_lora; one that does not leaves it to the trainer."""
    import importlib

    for name, declared in BACKENDS.items():
        source = inspect.getsource(importlib.import_module(f"qlora4080.backends.{name}").attach_lora)
        assert ("use_gradient_checkpointing=" in source) is declared.owns_gradient_checkpointing, name


def test_nothing_outside_the_backends_asks_a_backend_by_name_or_a_method_by_name():
    import re

    from conftest import REPO

    asked = re.compile(r"""(backend(_name)?|\.method)\s*(==|!=|in)\s*[("'](?!auto["'])""")  # "auto" is a request
    found = []
    for path in sorted((REPO / "qlora4080").rglob("*.py")):
        relative = path.relative_to(REPO / "qlora4080").as_posix()
        if relative.startswith(("backends/", "methods/")) or relative == "backend_capabilities.py":
            continue
        found += [f"{relative}:{number}: {line.strip()}" for number, line in
                  enumerate(path.read_text(encoding="utf-8").splitlines(), start=1) if asked.search(line)]
    assert not found, "ask the capability or the method's spec instead:\n" + "\n".join(found)


@pytest.mark.parametrize("name", list(BACKENDS))
def test_continuing_from_an_adapter_is_refused_where_the_backend_cannot(name, tmp_path, tiny_model_dir, tiny_checkpoint):
    from qlora4080.training.model_setup import continue_adapter
    from qlora4080.training.rundirs import RunDirs
    from qlora4080.training.runlog import RunLog
    from qlora4080.training.session import RunContext

    recipe = load_recipe(write_recipe(tmp_path, str(tiny_model_dir), model={"adapter": str(tiny_checkpoint)}))
    dirs = RunDirs("r", tmp_path / "c", tmp_path / "l")
    (tmp_path / "l").mkdir()
    run = RunContext.begin(recipe, dirs, RunLog(tmp_path / "l" / "train.log"), None)
    if capabilities(name).continues_adapter:
        return  # loading it is what every DPO/KTO-from-SFT test does
    with pytest.raises(QloraError, match=f"needs the {' or '.join(backends_that('continues_adapter'))} backend"):
        continue_adapter(run, name, None, tiny_checkpoint)  # refused before the base model is needed
