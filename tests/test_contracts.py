"""Every keyword qlora4080 passes to unsloth, trl, transformers and peft exists in the locked releases.

unsloth cannot be imported without a GPU, so its signatures are read from the source of the
locked wheel (downloaded without dependencies, parsed with ast, never imported). trl,
transformers and peft are installed from the same lock, so their classes are inspected
directly. Our side is read from our own source with ast, so a new call site is checked the
day it is written, long before a GPU runs it.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version

import pytest
from stack_lock import REPO, canonical, find_function, locked_versions, locked_wheel, named_parameters, parse_from_wheel

PACKAGE = REPO / "qlora4080"


@dataclass
class CallSite:
    contract: str
    where: str
    keywords: set[str]


def _contract_of(call: ast.Call) -> str | None:
    """Which library entry point a call in our code goes to, if any."""
    func = call.func
    if isinstance(func, ast.Call) and ast.unparse(func.func) == "counting_trainer_class":
        return "trl.SFTTrainer"  # counting_trainer_class() returns an SFTTrainer subclass
    if isinstance(func, ast.Call) and ast.unparse(func.func) == "preference_trainer_class":
        return "trl.DPOTrainer"  # preference_trainer_class() returns a DPOTrainer subclass
    text = ast.unparse(func)
    if text.endswith("FastLanguageModel.from_pretrained"):
        return "unsloth.FastLanguageModel.from_pretrained"
    if text.endswith("FastLanguageModel.get_peft_model"):
        return "unsloth.FastLanguageModel.get_peft_model"
    if isinstance(func, ast.Attribute) and func.attr == "save_pretrained_merged":
        return f"unsloth.{func.attr}"
    return {"SFTConfig": "trl.SFTConfig", "DPOConfig": "trl.DPOConfig", "BitsAndBytesConfig": "transformers.BitsAndBytesConfig",
            "LoraConfig": "peft.LoraConfig", "prepare_model_for_kbit_training": "peft.prepare_model_for_kbit_training",
            }.get(text)


def shared_trainer_arguments() -> set[str]:
    """The keywords training/config.py's trainer_arguments() returns (every method's config gets them)."""
    tree = ast.parse((PACKAGE / "training" / "config.py").read_text(encoding="utf-8"))
    function = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "trainer_arguments")
    built = next(n for n in ast.walk(function) if isinstance(n, ast.Return) and isinstance(n.value, ast.Call))
    assert isinstance(built.value, ast.Call) and ast.unparse(built.value.func) == "dict", "trainer_arguments returns dict(...)"
    keys = {keyword.arg for keyword in built.value.keywords if keyword.arg is not None}
    for keyword in built.value.keywords:
        if keyword.arg is None:
            keys |= _expanded_keys(keyword.value) or set()
    return keys


def _expanded_keys(expression: ast.expr) -> set[str] | None:
    """Keys a `**expression` can pass: dict literals inside it, our checkpointing helper's keys, or the shared
    trainer arguments (a name bound to trainer_arguments(...), by convention `shared`)."""
    if isinstance(expression, ast.Name) and expression.id == "shared":
        return shared_trainer_arguments()
    keys = {node.value for d in ast.walk(expression) if isinstance(d, ast.Dict)
            for node in d.keys if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    if any(isinstance(n, ast.Call) and ast.unparse(n.func) == "checkpointing_options" for n in ast.walk(expression)):
        from qlora4080.training.compat import checkpointing_options

        keys |= set(checkpointing_options(True)) | set(checkpointing_options(False))
    return keys or None


def call_sites(source: str, filename: str) -> Iterator[CallSite]:
    for node in ast.walk(ast.parse(source, filename=filename)):
        if not isinstance(node, ast.Call) or not (contract := _contract_of(node)):
            continue
        keywords: set[str] = set()
        for keyword in node.keywords:
            if keyword.arg is not None:
                keywords.add(keyword.arg)
            elif (expanded := _expanded_keys(keyword.value)) is not None:
                keywords |= expanded
            else:
                raise AssertionError(f"{filename}:{node.lineno}: cannot read the keys of **{ast.unparse(keyword.value)} "
                                     "statically; teach tests/test_contracts.py how, so the call stays checked")
        yield CallSite(contract, f"{filename}:{node.lineno}", keywords)


def our_call_sites() -> list[CallSite]:
    sites = []
    for path in sorted(PACKAGE.rglob("*.py")):
        sites += call_sites(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    return sites


# ---- what the locked libraries accept: (named parameters, whether **kwargs takes the rest) ----

def _unsloth(module_path: str, qualified: str) -> Callable[[], tuple[set[str], bool]]:
    def read() -> tuple[set[str], bool]:
        tree = parse_from_wheel(locked_wheel("unsloth"), module_path)
        return named_parameters(find_function(tree, qualified))
    return read


def _installed(target: Callable[[], object]) -> Callable[[], tuple[set[str], bool]]:
    def read() -> tuple[set[str], bool]:
        obj = target()
        if dataclasses.is_dataclass(obj):
            return {field.name for field in dataclasses.fields(obj)}, False
        parameters = inspect.signature(obj).parameters.values()
        names = {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        return names, any(p.kind == p.VAR_KEYWORD for p in parameters)
    return read


def _sft_trainer_init() -> object:
    from trl import SFTTrainer

    return SFTTrainer.__init__


def _sft_config() -> object:
    from trl import SFTConfig

    return SFTConfig


def _dpo_trainer_init() -> object:
    from trl import DPOTrainer

    return DPOTrainer.__init__


def _dpo_config() -> object:
    from trl import DPOConfig

    return DPOConfig


def _bnb_config() -> object:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig.__init__


def _lora_config() -> object:
    from peft import LoraConfig

    return LoraConfig


def _kbit() -> object:
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training


ACCEPTED: dict[str, Callable[[], tuple[set[str], bool]]] = {
    "unsloth.FastLanguageModel.from_pretrained": _unsloth("unsloth/models/loader.py", "FastLanguageModel.from_pretrained"),
    # FastLanguageModel.get_peft_model is (model, *args, **kwargs) forwarding to FastLlamaModel's
    "unsloth.FastLanguageModel.get_peft_model": _unsloth("unsloth/models/llama.py", "FastLlamaModel.get_peft_model"),
    # unsloth binds these functions onto the model it returns
    "unsloth.save_pretrained_merged": _unsloth("unsloth/save.py", "unsloth_save_pretrained_merged"),
    "trl.SFTConfig": _installed(_sft_config),
    "trl.SFTTrainer": _installed(_sft_trainer_init),
    "trl.DPOConfig": _installed(_dpo_config),
    "trl.DPOTrainer": _installed(_dpo_trainer_init),
    "transformers.BitsAndBytesConfig": _installed(_bnb_config),
    "peft.LoraConfig": _installed(_lora_config),
    "peft.prepare_model_for_kbit_training": _installed(_kbit),
}


def unknown_keywords(site: CallSite) -> list[str]:
    """Keywords of a call that the locked library would not bind to a named parameter."""
    names, _takes_rest = ACCEPTED[site.contract]()
    problems = []
    for keyword in sorted(site.keywords - names):
        close = difflib.get_close_matches(keyword, sorted(names), n=2)
        problems.append(f"{site.where}: {site.contract} has no parameter '{keyword}'"
                        + (f" (close: {', '.join(close)})" if close else ""))
    return problems


def test_installed_stack_is_the_locked_one() -> None:
    pins = locked_versions()
    for name in ("transformers", "trl", "peft", "accelerate", "datasets"):
        assert version(name) == pins[canonical(name)], (
            f"{name} {version(name)} is installed but the lock says {pins[canonical(name)]}: run make venv")


def test_every_library_entry_point_we_rely_on_is_found_in_our_code() -> None:
    found = {site.contract for site in our_call_sites()}
    expected = set(ACCEPTED) - {"unsloth.save_pretrained_merged"}  # merged export goes through peft
    assert expected <= found, f"the scanner no longer sees calls to {sorted(expected - found)}"


@pytest.mark.parametrize("contract", sorted(ACCEPTED))
def test_our_keywords_exist_in_the_locked_release(contract: str) -> None:
    problems = [p for site in our_call_sites() if site.contract == contract for p in unknown_keywords(site)]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_a_renamed_field() -> None:
    """The bug that once stopped every run: a trl 1.16 field name used against trl 1.15."""
    code = "SFTConfig(output_dir='x', activation_checkpointing=True)\nFastLanguageModel.get_peft_model(m, rank=8)\n"
    problems = [p for site in call_sites(code, "example.py") for p in unknown_keywords(site)]
    assert any("'activation_checkpointing'" in p for p in problems), problems
    assert any("'rank'" in p for p in problems), problems


def test_unsloth_source_is_read_from_the_locked_wheel() -> None:
    wheel = locked_wheel("unsloth")
    assert wheel.name.startswith(f"unsloth-{locked_versions()['unsloth']}-")
    names, _ = ACCEPTED["unsloth.FastLanguageModel.from_pretrained"]()
    assert {"model_name", "max_seq_length", "load_in_4bit", "dtype"} <= names
