"""unsloth in CI: its rewritten TRL trainers run qlora4080's SFT, DPO and ORPO on the CPU, and every keyword we pass
to unsloth is one its installed source takes.

unsloth (2026.10) imports on a CPU with UNSLOTH_ALLOW_CPU=1; `make venv` installs it there without its CUDA-only
requirements. tests/unsloth_probe.py applies its trainer rewrite as the GPU import does and runs our stages.
"""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
from conftest import REPO, write_recipe

PROBE = REPO / "tests" / "unsloth_probe.py"
UNSLOTH = Path(find_spec("unsloth").submodule_search_locations[0]) if find_spec("unsloth") else None  # type: ignore[union-attr,index]


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[dict, Path]:
    from test_preference_training import dpo_recipe

    assert UNSLOTH is not None, "unsloth is not installed: `make venv` installs it on the CPU too"
    work = tmp_path_factory.mktemp("unsloth")
    for method in ("sft", "dpo", "orpo"):
        (work / method).mkdir()
    recipes = {"sft": write_recipe(work / "sft", str(tiny_model_dir), training={"max_steps": 2})}
    for method in ("dpo", "orpo"):
        recipes[method] = dpo_recipe(work / method, tiny_model_dir, max_steps=2, method=method)
    cache = work / "cache"
    env = {**os.environ, "UNSLOTH_ALLOW_CPU": "1", "QLORA4080_CACHE": str(cache), "HF_HUB_OFFLINE": "",
           "HF_ENDPOINT": "http://127.0.0.1:9", "TRANSFORMERS_OFFLINE": ""}  # a hub that cannot be reached
    env.pop("UNSLOTH_COMPILE_LOCATION", None)
    done = subprocess.run([sys.executable, str(PROBE), str(work), *(f"{m}={r}" for m, r in recipes.items())],
                          capture_output=True, text=True, timeout=1500, cwd=work, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), work


@pytest.mark.slow
@pytest.mark.parametrize("method, trainer", [("sft", "UnslothSFTTrainer"), ("dpo", "UnslothDPOTrainer"),
                                             ("orpo", "UnslothORPOTrainer")])
def test_our_trainers_train_through_unsloths_rewritten_classes(probed, method, trainer):
    report = probed[0][method]
    assert trainer in report["trainer_classes"], report["trainer_classes"]  # unsloth's class, under ours
    assert report["steps"] == 2 and len(report["losses"]) == 2
    assert all(math.isfinite(loss) and loss < 50 for loss in report["losses"])
    assert report["max_length"] == 128  # the recipe's max_seq_len, kept (unsloth sets None when padding-free)
    assert report["dataset_is_qlora4080_rows"]  # no re-tokenization: the trainer holds our rows as they were
    assert report["rows_seen"] > 0 and report["inputs_are_qlora4080_rows"]
    if method != "orpo":
        assert report["labels_are_qlora4080_rows"]  # assistant-only labels survive into the forward


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_padding_free_is_off_as_the_plan_says(probed, method):
    """Left unset, unsloth's SFTTrainer turns padding-free on, drops max_length and flattens the batch into one
    row, which transformers' sdpa/eager attention does not keep apart: set False explicitly, and kept."""
    report = probed[0][method]
    assert report["padding_free"] is False
    assert "position_ids" not in report["forward_keys"] and "packed_seq_lengths" not in report["forward_keys"]


@pytest.mark.slow
def test_unsloth_knows_it_is_offline_inside_our_hub_context(probed):
    """unsloth decides offline from HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE only; the hub context sets them."""
    offline = probed[0]["offline"]
    assert offline == {"outside": False, "inside": True, "hub_reachable": False, "after": False}


@pytest.mark.slow
def test_unsloths_generated_trainers_stay_out_of_the_working_folder(probed):
    _, work = probed
    assert not (work / "unsloth_compiled_cache").exists()
    assert any((work / "cache" / "unsloth_compiled_cache").glob("Unsloth*Trainer.py"))


def test_the_compiled_cache_is_ignored_by_git():
    assert "unsloth_compiled_cache/" in (REPO / ".gitignore").read_text().splitlines()


# ---- every keyword we pass to unsloth, against the installed unsloth's source ----

# unsloth function -> (file under unsloth/, class or None, function); what `FastLanguageModel.x` / `model.x` resolve to.
UNSLOTH_FUNCTIONS = {
    "from_pretrained": ("models/loader.py", "FastLanguageModel", "from_pretrained"),
    "get_peft_model": ("models/llama.py", "FastLlamaModel", "get_peft_model"),
    "for_inference": ("models/llama.py", "FastLlamaModel", "for_inference"),
    "for_training": ("models/llama.py", "FastLlamaModel", "for_training"),
    "save_pretrained_gguf": ("save.py", None, "unsloth_save_pretrained_gguf"),
}
OUR_CODE = [*sorted((REPO / "qlora4080").rglob("*.py")), *sorted((REPO / "bench").rglob("*.py"))]


def _unsloth_calls() -> list[tuple[str, str, list[str], dict[str, object]]]:
    """(file:line, unsloth function, keywords, constant keyword values) of each unsloth call in our code."""
    calls = []
    for path in OUR_CODE:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name, owner = node.func.attr, node.func.value
            via_class = isinstance(owner, ast.Name) and owner.id == "FastLanguageModel"
            if name in UNSLOTH_FUNCTIONS and (via_class or name == "save_pretrained_gguf"):
                keywords = [k.arg for k in node.keywords if k.arg is not None]
                constants = {k.arg: k.value.value for k in node.keywords if k.arg and isinstance(k.value, ast.Constant)}
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", name, keywords, constants))
    return calls


def _accepted(file: str, owner: str | None, function: str) -> set[str]:
    """Parameter names of the installed unsloth function, plus the names its body reads from **kwargs."""
    assert UNSLOTH is not None
    tree = ast.parse((UNSLOTH / file).read_text(encoding="utf-8"))
    scope = tree.body
    if owner is not None:
        scope = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == owner).body
    definition = next(n for n in scope if isinstance(n, ast.FunctionDef) and n.name == function)
    arguments = definition.args
    names = {a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]}
    if arguments.kwarg is not None:  # names read as kwargs.get("x"), kwargs.pop("x"), kwargs["x"], "x" in kwargs
        kwargs = arguments.kwarg.arg
        for node in ast.walk(definition):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "pop") \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == kwargs and node.args \
                    and isinstance(node.args[0], ast.Constant):
                names.add(str(node.args[0].value))
            elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == kwargs \
                    and isinstance(node.slice, ast.Constant):
                names.add(str(node.slice.value))
    return names


def test_every_keyword_we_pass_to_unsloth_is_one_it_takes():
    assert UNSLOTH is not None, "unsloth is not installed: `make venv` installs it on the CPU too"
    calls = _unsloth_calls()
    assert {name for _, name, _, _ in calls} >= {"from_pretrained", "get_peft_model"}, calls  # the scan found them
    problems = []
    for where, name, keywords, _ in calls:
        accepted = _accepted(*UNSLOTH_FUNCTIONS[name])
        problems += [f"{where}: {name}({keyword}=...) is not a parameter of unsloth's {name}"
                     for keyword in keywords if keyword not in accepted]
    assert not problems, "\n".join(problems)


def test_the_backend_loads_exactly_the_named_model_offline_when_the_hub_is_away():
    """unsloth swaps a 16-bit repo for its own -unsloth-bnb-4bit one unless use_exact_model_name=True."""
    assert UNSLOTH is not None
    mapper = (UNSLOTH / "models" / "mapper.py").read_text(encoding="utf-8")
    assert '"unsloth/Qwen3-4B-Instruct-2507-unsloth-bnb-4bit"' in mapper  # the swap our headline recipe would get
    loads = [c for c in _unsloth_calls() if c[0].startswith("qlora4080/backends/unsloth.py") and c[1] == "from_pretrained"]
    assert loads, "backends/unsloth.py no longer calls FastLanguageModel.from_pretrained"
    for _, _, keywords, constants in loads:
        assert constants.get("use_exact_model_name") is True
        assert "local_files_only" in keywords and "on_model_resolved" in keywords
