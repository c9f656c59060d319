"""unsloth patches transformers, trl and peft when it is imported, so on the unsloth path it
must be imported before any of them. A stand-in `unsloth` module, served by an import hook
in a fresh interpreter, records which of those were already loaded at the moment it loads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO, write_recipe

PATCHED_BY_UNSLOTH = ("transformers", "trl", "peft")

# Runs in a fresh interpreter: a fake CUDA machine, a stand-in unsloth that records the
# modules already imported and then stops the run when asked to load a model.
PROBE = r"""
import importlib.abc, importlib.machinery, json, sys

seen = {}

class StandInUnsloth(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.machinery.ModuleSpec(name, self) if name == "unsloth" else None
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        seen["loaded_before_unsloth"] = sorted(m for m in PATCHED if m in sys.modules)
        class FastLanguageModel:
            @staticmethod
            def from_pretrained(**kwargs):
                raise StopAtModelLoad()
        module.FastLanguageModel = FastLanguageModel

class StopAtModelLoad(Exception):
    pass

PATCHED = %(patched)r
sys.meta_path.insert(0, StandInUnsloth())

import qlora4080.hardware as hardware
fake_gpu = hardware.Hardware(device="cuda", gpu_name="Stand-in 16 GB", gpu_total_bytes=16 * 2**30,
                             bf16_supported=True, cpu_count=2)
hardware.detect = lambda: fake_gpu

from qlora4080 import load_recipe, train
recipe = load_recipe(%(recipe)r, ["model.backend=unsloth"])
try:
    train(recipe, run_name="order", live=False)
except StopAtModelLoad:
    seen["reached_model_load"] = True
print("RESULT " + json.dumps(seen))
"""


def _probe(recipe: Path) -> dict:
    script = PROBE % {"patched": PATCHED_BY_UNSLOTH, "recipe": str(recipe)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=recipe.parent, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"probe printed no result (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def test_train_imports_unsloth_before_transformers_trl_and_peft(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = write_recipe(tmp_path, str(tiny_model_dir),
                          output={"checkpoints_dir": str(tmp_path / "checkpoints"), "runs_dir": str(tmp_path / "runs")})
    seen = _probe(recipe)
    assert seen.get("reached_model_load"), f"the run never asked unsloth for the model: {seen}"
    assert seen["loaded_before_unsloth"] == [], (
        f"{seen['loaded_before_unsloth']} were imported before unsloth, so unsloth could not patch them")
