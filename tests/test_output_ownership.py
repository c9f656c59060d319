"""Outputs go to the checkpoint's own run, never into a file or folder the command did not write,
and an earlier export is replaced only by a complete new one."""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import CLI, DEMO_DATA, write_recipe
from typer.testing import CliRunner, Result

from qlora4080 import load_recipe, train
from qlora4080.batch_infer import read_prompts
from qlora4080.cli import app
from qlora4080.errors import QloraError
from qlora4080.export import EXPORT_RECORD, check_out_dir
from qlora4080.runlock import holding, lock_path_outside


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    return result


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text)).strip()


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def test_eval_writes_into_the_checkpoint_s_own_run_not_the_current_folder(tmp_path: Path, tiny_model_dir: Path) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    os.chdir(project)
    train(load_recipe(write_recipe(project, str(tiny_model_dir), training={"max_steps": 1})), run_name="r", live=False)
    os.chdir(elsewhere)
    done = invoke("eval", str(project / "checkpoints" / "r"), "--limit", "1", "--max-new-tokens", "2")
    assert done.exit_code == 0, done.output
    assert (project / "runs" / "r" / "eval.json").is_file()
    assert list(elsewhere.iterdir()) == []  # no stray runs/ where the command was started


def test_chat_save_refuses_files_it_did_not_write(tmp_path: Path, tiny_checkpoint: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello\nWhat is 2+2?\n")
    training_data = tmp_path / "train.jsonl"
    shutil.copy(DEMO_DATA / "train.jsonl", training_data)
    before = {path: path.read_bytes() for path in (prompts, training_data)}
    same = invoke("chat", str(tiny_checkpoint), "--tests", str(prompts), "--save", str(prompts))
    assert same.exit_code == 2 and "answers would be appended to your prompts" in flat(same.output)
    foreign = invoke("chat", str(tiny_checkpoint), "--tests", str(prompts), "--save", str(training_data))
    assert foreign.exit_code == 2 and 'is not an answer as generate writes them' in flat(foreign.output)
    assert "--save" in flat(foreign.output)
    assert {path: path.read_bytes() for path in before} == before


def test_generate_ids_of_another_prompts_file_never_collide(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text('{"prompt": "Name a color."}\n{"prompt": "Name a fruit."}\n')
    second.write_text('{"prompt": "Name a city."}\n{"prompt": "Name a river."}\n')
    ids_a, ids_b = ([p.id for p in read_prompts(path).prompts] for path in (first, second))
    assert not set(ids_a) & set(ids_b)
    assert [p.id for p in read_prompts(first).prompts] == ids_a  # the same file resumes: stable ids


def test_two_generate_runs_on_one_output_are_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    prompts, output = tmp_path / "p.jsonl", tmp_path / "answers.jsonl"
    prompts.write_text('{"prompt": "Hi"}\n')
    with holding(output, f"generate into {output}", lock_path_outside(output)):
        done = invoke("generate", str(tiny_checkpoint), "-i", str(prompts), "-o", str(output))
    assert done.exit_code == 2 and "in use by another qlora4080 process" in flat(done.output)
    assert not output.exists()


def test_export_overwrite_never_removes_a_model_folder_it_did_not_write(tmp_path: Path, tiny_model_dir: Path,
                                                                        tiny_checkpoint: Path) -> None:
    base = tmp_path / "base-model"
    shutil.copytree(tiny_model_dir, base)
    before = _hashes(base)
    with pytest.raises(QloraError, match=f"does not look like an earlier export \\(no {EXPORT_RECORD}\\)"):
        check_out_dir(base, overwrite=True, source=tiny_checkpoint)
    assert _hashes(base) == before


def test_gguf_overwrite_never_removes_a_folder_of_gguf_files_it_did_not_write(tmp_path: Path,
                                                                               tiny_checkpoint: Path) -> None:
    models = tmp_path / "my-models"  # the user's own llama.cpp models and notes
    models.mkdir()
    (models / "llama-3-8b-q4_k_m.gguf").write_bytes(b"GGUF" + bytes(64))
    (models / "notes.txt").write_text("which quant worked best\n")
    before = _hashes(models)
    result = invoke("export", str(tiny_checkpoint), "--gguf", "q8_0", "--gguf-dir", str(models), "--overwrite")
    assert result.exit_code == 2 and "is not an earlier GGUF export of qlora4080" in flat(result.output), result.output
    assert _hashes(models) == before


def test_gguf_overwrite_refuses_an_earlier_export_holding_files_it_did_not_write(tmp_path: Path,
                                                                               tiny_checkpoint: Path) -> None:
    earlier = tmp_path / "gguf"
    earlier.mkdir()
    (earlier / "ck-q8_0.gguf").write_bytes(b"GGUF")
    (earlier / "Modelfile").write_text("FROM ./ck-q8_0.gguf\n")
    (earlier / "qlora4080_gguf.json").write_text(json.dumps({"file": "ck-q8_0.gguf"}))
    (earlier / "llama-3-8b.gguf").write_bytes(b"GGUF the user's own")
    before = _hashes(earlier)
    result = invoke("export", str(tiny_checkpoint), "--gguf", "q8_0", "--gguf-dir", str(earlier), "--overwrite")
    assert result.exit_code == 2 and "now also holds llama-3-8b.gguf" in flat(result.output), result.output
    assert _hashes(earlier) == before


def test_a_failed_export_keeps_the_earlier_one(tmp_path: Path, tiny_checkpoint: Path) -> None:
    out = tmp_path / "merged"
    first = subprocess.run([*CLI, "export", str(tiny_checkpoint), "--merged", str(out)], capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    before = _hashes(out)
    assert json.loads((out / EXPORT_RECORD).read_text())["merged_from"] == str(tiny_checkpoint.resolve())

    def small_files() -> None:  # the merged weights (13 MB) cannot be written: the new merge fails half way
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    again = subprocess.run([*CLI, "export", str(tiny_checkpoint), "--merged", str(out), "--overwrite"],
                           capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    assert again.returncode != 0 and "Traceback" not in again.stderr, again.stdout + again.stderr
    assert _hashes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".merged")) == []

    # A file the user then put into the export is not the export's to delete: --overwrite refuses, naming it.
    (out / "notes.txt").write_text("which prompts worked")
    refused = invoke("export", str(tiny_checkpoint), "--merged", str(out), "--overwrite")
    assert refused.exit_code == 2 and "now also holds notes.txt, which the export did not write" in flat(refused.output)
    assert (out / "notes.txt").read_text() == "which prompts worked"
