"""Fuzzing the real commands in-process: whatever a user types, writes or sets, the answer is a
clear error with a non-zero exit (or success), never a traceback, and no file the user had changes.

Inputs come from hypothesis: mutated recipes (unknown sections and keys, wrong types, junk
values), `--set` items, JSONL data lines (broken JSON, bad UTF-8, odd shapes), and command
arguments pointing at the wrong kind of path. Commands that would load a model are given
inputs that must be refused before any loading, so the suite stays fast on two cores.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import DEMO_DATA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from qlora4080.cli import app

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SECTIONS = ["model", "lora", "data", "training", "output", "modle", "extra"]
KEYS = ["name", "max_seq_len", "load_in_4bit", "backend", "dtype", "r", "alpha", "dropout", "target_modules", "train",
        "validation", "train_on", "truncation", "packing", "sources", "epochs", "max_steps", "batch_size", "grad_accum",
        "learning_rate", "scheduler", "warmup_ratio", "seed", "run_name", "checkpoints_dir", "runs_dir", "nmae", "r "]
VALUES = st.one_of(
    st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.text(max_size=24), st.sampled_from(["", ".", "..", "../x", "/", "auto", "hf", "unsloth", "-1", "1e-4", "all-linear"]),
    st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=5)), max_size=3),
    st.none(),  # None removes the key
)


def toml_value(value: object) -> str:
    """TOML for a fuzzed value (strings through JSON escaping, which TOML basic strings accept)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def recipe_text(model_dir: Path, edits: list[tuple[str, str, object]]) -> str:
    tables: dict[str, dict[str, object]] = {
        "model": {"name": str(model_dir), "max_seq_len": 128, "load_in_4bit": False},
        "lora": {"r": 8},
        "data": {"train": str(DEMO_DATA / "train.jsonl")},
        "training": {"max_steps": 2, "batch_size": 2, "grad_accum": 1},
    }
    for section, key, value in edits:
        table = tables.setdefault(section, {})
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return "\n".join(f"[{section}]\n" + "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in table.items())
                     for section, table in tables.items())


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` and a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"qlora4080 {' '.join(map(repr, args))} raised "
                             f"{type(result.exception).__name__}: {result.exception}\n{result.output[-2000:]}") from result.exception
    assert "Traceback (most recent call last)" not in result.output, result.output[-3000:]
    return result.exit_code, result.output


@contextmanager
def failing_if_hung(seconds: int, args: list[str]) -> Iterator[None]:
    """A command that never returns (reading a FIFO or /dev/zero) fails the test instead of hanging the suite."""
    def hung(signum: int, frame: object) -> None:
        raise AssertionError(f"qlora4080 {' '.join(args)} still running after {seconds} s: it hangs")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def user_files(folder: Path) -> None:
    (folder / "notes.txt").write_text("mine")
    (folder / "recipes").mkdir(exist_ok=True)
    (folder / "recipes" / "keep.toml").write_text("# mine")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    user_files(tmp_path)
    return tmp_path


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(SECTIONS), st.sampled_from(KEYS), VALUES), max_size=4))
def test_any_recipe_gets_a_verdict_not_a_traceback(workdir: Path, tiny_model_dir: Path, edits) -> None:
    recipe = workdir / "fuzzed.toml"
    recipe.write_text(recipe_text(tiny_model_dir, edits), encoding="utf-8")
    before = snapshot(workdir)
    code, output = run_cli(["train", str(recipe), "--dry-run"])
    assert code in (0, 2), output[-2000:]
    assert snapshot(workdir) == before, "a dry run changed files"


@FUZZ
@given(items=st.lists(st.one_of(
    st.text(max_size=30),
    st.builds(lambda s, k, v: f"{s}.{k}={v}", st.sampled_from(SECTIONS), st.sampled_from(KEYS),
              st.one_of(st.text(max_size=12), st.integers().map(str), st.sampled_from(["", "[1,", "{a=1}", "true"]))),
), min_size=1, max_size=3))
def test_any_set_override_gets_a_verdict(workdir: Path, tiny_model_dir: Path, items: list[str]) -> None:
    recipe = workdir / "base.toml"
    recipe.write_text(recipe_text(tiny_model_dir, []), encoding="utf-8")
    before = snapshot(workdir)
    args = ["train", str(recipe), "--dry-run"]
    for item in items:
        args += ["--set", item]
    code, output = run_cli(args)
    assert code in (0, 2), output[-2000:]
    assert snapshot(workdir) == before


JSON_RECORDS = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=12)),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(
        st.sampled_from(["messages", "role", "content", "conversations", "from", "value", "instruction", "output",
                         "prompt", "completion", "tool_calls", "x"]), children, max_size=4)),
    max_leaves=12,
)
MESSAGES = st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["system", "user", "assistant", "tool", "robot", ""]),
    "content": st.one_of(st.text(max_size=20), st.none(), st.integers()),
}), max_size=4).map(lambda messages: {"messages": messages})
LINES = st.lists(st.one_of(
    JSON_RECORDS.map(lambda r: json.dumps(r).encode()),
    MESSAGES.map(lambda r: json.dumps(r, ensure_ascii=False).encode()),
    st.binary(max_size=40),
    st.sampled_from([b"", b"{", b"\xff\xfe{}", b"\xef\xbb\xbf{\"messages\": []}", b"null", b"[]"]),
    # what breaks parsers rather than shapes: nesting past the recursion limit, huge integers, lone surrogates
    st.integers(1, 60_000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(1, 60_000).map(lambda depth: b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"),
    st.integers(4000, 9000).map(lambda digits: b'{"messages": [], "n": ' + b"7" * digits + b"}"),
    st.sampled_from(["\\ud800", "\\udfff", "\\ud83d", "\\ud83d\\ude00"]).map(
        lambda escape: ('{"messages": [{"role": "user", "content": "a' + escape
                        + '"}, {"role": "assistant", "content": "b"}]}').encode()),
), max_size=6)


@FUZZ
@given(lines=LINES, suffix=st.sampled_from([".jsonl", ".json", ".txt"]))
def test_any_data_file_gets_a_report(workdir: Path, lines: list[bytes], suffix: str) -> None:
    data = workdir / f"data{suffix}"
    data.write_bytes(b"\n".join(lines))
    before = snapshot(workdir)
    code, output = run_cli(["data", "check", str(data)])
    assert code in (0, 1, 2), output[-2000:]
    assert snapshot(workdir) == before


def _wrong_paths(root: Path) -> dict[str, str]:
    """Paths of every wrong kind a user passes by mistake (FIFOs and devices never end when read)."""
    (root / "empty-dir").mkdir(exist_ok=True)
    if not (root / "pipe.jsonl").exists():
        os.mkfifo(root / "pipe.jsonl")
        (root / "loop").symlink_to(root / "loop")  # a symlink to itself
        (root / "linked-dir").symlink_to(root / "empty-dir")
    junk = root / "junk-dir"
    junk.mkdir(exist_ok=True)
    (junk / "adapter_config.json").write_text("{not json")
    (root / "junk.bin").write_bytes(b"\x00\xffnot a model")
    (root / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    return {"missing": str(root / "nope"), "empty-dir": str(root / "empty-dir"), "junk-dir": str(junk),
            "junk-file": str(root / "junk.bin"), "prompts": str(root / "prompts.jsonl"), "builtin-typo": "builtin:nope",
            "blank": "", "dash": "-", "fifo": str(root / "pipe.jsonl"), "device": "/dev/zero",
            "symlink-loop": str(root / "loop"), "linked-dir": str(root / "linked-dir")}


COMMANDS = [
    lambda p: ["chat", p[0], "--prompt", "hi"],
    lambda p: ["eval", p[0]],
    lambda p: ["generate", p[0], "-i", p[1], "-o", p[2]],
    lambda p: ["export", p[0], "--merged", p[1]],
    lambda p: ["data", "preview", p[0]],
    lambda p: ["data", "build", p[0]],
    lambda p: ["train", p[0], "--resume"],
    lambda p: ["doctor", p[0]],
]


@FUZZ
@given(command=st.sampled_from(range(len(COMMANDS))),
       picks=st.lists(st.sampled_from(["missing", "empty-dir", "junk-dir", "junk-file", "prompts", "builtin-typo",
                                       "blank", "dash", "fifo", "device", "symlink-loop", "linked-dir"]),
                      min_size=3, max_size=3))
def test_wrong_paths_get_clear_errors(workdir: Path, command: int, picks: list[str]) -> None:
    paths = _wrong_paths(workdir)
    args = COMMANDS[command]([paths[p] for p in picks])
    before = snapshot(workdir)
    with failing_if_hung(120, args):
        code, output = run_cli(args)
    assert code != 0, f"qlora4080 {' '.join(args)} succeeded on wrong input:\n{output[-2000:]}"
    after = snapshot(workdir)
    changed = {name for name in set(before) | set(after) if before.get(name) != after.get(name)}
    assert not changed, f"qlora4080 {' '.join(args)} changed {sorted(changed)}"


@FUZZ
@given(depth=st.integers(1, 60_000), where=st.sampled_from(["recipe", "--set"]),
       brackets=st.sampled_from([("[", "]"), ("{a=", "}")]))
def test_any_nesting_depth_gets_a_verdict(workdir: Path, tiny_model_dir: Path, depth: int, where: str,
                                          brackets: tuple[str, str]) -> None:
    value = brackets[0] * depth + brackets[1] * depth
    recipe = workdir / "deep.toml"
    text = recipe_text(tiny_model_dir, [])
    recipe.write_text(text + (f"\n[extra]\nx = {value}\n" if where == "recipe" else ""), encoding="utf-8")
    before = snapshot(workdir)
    args = ["train", str(recipe), "--dry-run"] + (["--set", f"training.seed={value}"] if where == "--set" else [])
    code, output = run_cli(args)
    assert code == 2, output[-2000:]  # refused: an unknown section, or a seed that is no integer
    assert snapshot(workdir) == before


@FUZZ
@given(checkpoints_dir=st.sampled_from(["checkpoints", "elsewhere", "deep/er", "."]),
       locked=st.sampled_from(["checkpoint", "logs"]), linked_runs=st.booleans(), overwrite=st.booleans())
def test_concurrent_runs_of_one_name_across_output_folders_are_refused(workdir: Path, tiny_model_dir: Path,
                                                                      checkpoints_dir: str, locked: str,
                                                                      linked_runs: bool, overwrite: bool) -> None:
    """Another process holds run 'busy' through one of its folders; this run names the same folders another way."""
    from qlora4080.runlock import holding

    real_runs = workdir / "real-runs"
    real_runs.mkdir(exist_ok=True)
    runs = workdir / "runs-link"
    if linked_runs and not runs.exists():
        runs.symlink_to(real_runs)
    runs_dir = runs if linked_runs else real_runs
    recipe = workdir / "busy.toml"
    recipe.write_text(recipe_text(tiny_model_dir, [("output", "checkpoints_dir", str(workdir / checkpoints_dir)),
                                                   ("output", "runs_dir", str(runs_dir))]), encoding="utf-8")
    held = (workdir / checkpoints_dir / "busy") if locked == "checkpoint" else (real_runs / "busy")
    def files() -> dict[str, str]:  # lock files are the locks' own business
        return {name: digest for name, digest in snapshot(workdir).items() if not name.endswith(".lock")}

    with holding(held, "run 'busy'"):
        before = files()
        code, output = run_cli(["train", str(recipe), "--run-name", "busy", *(["--overwrite"] * overwrite)])
    assert code == 2 and "in use by another qlora4080 process" in output, output[-2000:]
    assert files() == before


_TINY_ADAPTER: list[object] = []


def _tiny_adapter(tiny_model_dir: Path) -> tuple[object, object]:
    """A real LoRA model (peft over the tiny Llama) and its tokenizer, built once."""
    if not _TINY_ADAPTER:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                               LoraConfig(r=4, target_modules="all-linear"))
        _TINY_ADAPTER.extend([model, AutoTokenizer.from_pretrained(tiny_model_dir)])
    return _TINY_ADAPTER[0], _TINY_ADAPTER[1]


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(kilobytes=st.integers(4, 4200))
def test_a_save_failing_at_any_write_keeps_the_weights_and_the_old_files(tmp_path: Path, tiny_model_dir: Path,
                                                                         kilobytes: int) -> None:
    """A filesystem of every size from nearly empty to just enough: the save fails at a different write each time."""
    import shutil
    import subprocess

    from safetensors.torch import load_file

    from qlora4080.errors import QloraError
    from qlora4080.training.saving import save_adapter

    mount = tmp_path / f"disk-{kilobytes}"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs", str(mount)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a small filesystem here (needs root)")
    try:
        folder = mount / "run"
        folder.mkdir()
        (folder / "notes.txt").write_text("the run's earlier files")
        model, tokenizer = _tiny_adapter(tiny_model_dir)
        try:
            save_adapter(model, tokenizer, folder, {"qlora4080.json": "{}"})  # type: ignore[arg-type]
        except QloraError as error:
            message = " ".join(str(error).split())
            assert error.exit_code == 4, message
            rescue = Path(message.split("saved instead to ")[1].split()[0].rstrip(";,"))
            assert load_file(str(rescue / "adapter_model.safetensors"))
            shutil.rmtree(rescue)
        else:
            assert load_file(str(folder / "adapter_model.safetensors")) and (folder / "tokenizer.json").is_file()
        assert (folder / "notes.txt").read_text() == "the run's earlier files"
        assert not [p.name for p in folder.iterdir() if p.name.startswith(".saving")]
    finally:
        subprocess.run(["umount", str(mount)], check=True)
