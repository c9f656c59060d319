"""unsloth in CI: its rewritten TRL trainers run qlora4080's SFT, DPO and ORPO on the CPU, and the defects a read of
its source found stay fixed.

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


# Every keyword we pass to unsloth is checked against its locked source in tests/test_contracts.py; here, the audit's
# defect: the named model, loaded exactly.

def test_the_backend_loads_exactly_the_named_model_offline_when_the_hub_is_away():
    """unsloth swaps a 16-bit repo for its own -unsloth-bnb-4bit one unless use_exact_model_name=True."""
    assert UNSLOTH is not None
    mapper = (UNSLOTH / "models" / "mapper.py").read_text(encoding="utf-8")
    assert '"unsloth/Qwen3-4B-Instruct-2507-unsloth-bnb-4bit"' in mapper  # the swap our headline recipe would get
    tree = ast.parse((REPO / "qlora4080" / "backends" / "unsloth.py").read_text(encoding="utf-8"))
    loads = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and ast.unparse(node.func).endswith("FastLanguageModel.from_pretrained")]
    assert loads, "backends/unsloth.py no longer calls FastLanguageModel.from_pretrained"
    for call in loads:
        keywords = {k.arg: k.value for k in call.keywords}
        exact = keywords.get("use_exact_model_name")
        assert isinstance(exact, ast.Constant) and exact.value is True
        assert "local_files_only" in keywords and "on_model_resolved" in keywords
