"""`qlora4080 runs`: listing, compare and loss plots on run folders written by real tiny-model training runs."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import write_recipe
from typer.testing import CliRunner

from qlora4080.cli import app
from qlora4080.console import console, err_console
from qlora4080.runlock import holding

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    for shared in (console, err_console):  # 200 columns: a message is never wrapped mid-phrase
        monkeypatch.setattr(shared, "_width", 200)


@pytest.fixture(scope="module")
def two_runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/ and checkpoints/ of two 4-step runs that differ in learning rate and LoRA rank."""
    from qlora4080 import load_recipe, train

    work = tmp_path_factory.mktemp("two-runs")
    output = {"checkpoints_dir": str(work / "checkpoints"), "runs_dir": str(work / "runs")}
    for name, overrides in (("fast", {}), ("slow", {"training.learning_rate": 1e-3, "lora.r": 4})):
        folder = work / name
        folder.mkdir()
        recipe = load_recipe(write_recipe(folder, str(tiny_model_dir), training={"max_steps": 4}, output=output), overrides)
        train(recipe, run_name=name, live=False)
    return work


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


def _json(*args: str) -> Any:
    code, output = _run(*args)
    assert code == 0, output
    return json.loads(output)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_list_reads_each_run_from_its_files(two_runs: Path) -> None:
    runs = _json("runs", "--runs-dir", str(two_runs / "runs"), "--json")
    assert [run["name"] for run in runs] == ["fast", "slow"]  # in the order they started
    for run in runs:
        summary = json.loads((two_runs / "runs" / run["name"] / "summary.json").read_text())
        assert run["status"] == "finished" and run["method"] == "sft"
        assert run["checkpoint"] == str(two_runs / "checkpoints" / run["name"])  # found through the run's recipe
        assert run["steps"] == 4 and run["final_loss"] == summary["last_loss"]
        assert run["eval_loss"] == summary["eval_loss"] and run["eval_perplexity"] == summary["eval_perplexity"]
        assert run["wall_seconds"] == summary["wall_seconds"] and run["peak_memory_gib"] == summary["peak_memory_gib"]
        assert run["recipe"]["training.max_steps"] == 4 and run["problems"] == []


def test_listing_loads_no_model_library_nor_matplotlib(two_runs: Path) -> None:
    probe = (f"import sys\nfrom qlora4080.cli import app\ntry:\n    app(['runs', '--runs-dir', {str(two_runs / 'runs')!r}, '--json'], "
             "prog_name='qlora4080')\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'matplotlib') if m in sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stderr.strip().splitlines()[-1] == "[]" and '"name": "fast"' in done.stdout


def test_list_table_on_a_terminal(two_runs: Path) -> None:
    code, output = _run("runs", "--runs-dir", str(two_runs / "runs"))
    assert code == 0, output
    assert "fast" in output and "slow" in output and output.count("finished") == 2


def test_compare_shows_the_recipe_keys_that_differ_and_the_results(two_runs: Path) -> None:
    compared = _json("runs", "compare", "slow", "fast", "--runs-dir", str(two_runs / "runs"), "--json")
    assert isinstance(compared, dict)
    assert compared["runs"] == ["slow", "fast"]
    assert compared["recipe_differences"] == {"lora.r": {"slow": 4, "fast": 8},
                                              "training.learning_rate": {"slow": 1e-3, "fast": 5e-3}}
    losses = compared["results"]["final loss"]
    assert losses == {name: json.loads((two_runs / "runs" / name / "summary.json").read_text())["last_loss"]
                      for name in ("slow", "fast")}
    code, output = _run("runs", "compare", "slow", "fast", "--runs-dir", str(two_runs / "runs"))
    assert code == 0 and "training.learning_rate" in output and "0.001" in output and "peak memory" in output


def test_unknown_run_name_lists_what_exists(two_runs: Path) -> None:
    code, output = _run("runs", "compare", "fast", "fsat", "--runs-dir", str(two_runs / "runs"))
    assert code == 2
    assert "no run named 'fsat'" in output and "runs there: fast, slow" in output
    code, output = _run("runs", "--runs-dir", str(two_runs / "nowhere"))
    assert code == 2 and "no runs folder" in output


def _copy_runs(two_runs: Path, tmp_path: Path) -> tuple[Path, Path]:
    runs, checkpoints = tmp_path / "runs", tmp_path / "checkpoints"
    shutil.copytree(two_runs / "runs", runs)
    for name in ("fast", "slow"):  # only what listing reads, not the adapter weights
        (checkpoints / name).mkdir(parents=True)
        for file in ("recipe.toml", "qlora4080.json"):
            shutil.copy(two_runs / "checkpoints" / name / file, checkpoints / name / file)
    return runs, checkpoints


def test_damaged_and_missing_files_are_listed_with_what_is_known(two_runs: Path, tmp_path: Path) -> None:
    runs, checkpoints = _copy_runs(two_runs, tmp_path)
    (runs / "fast" / "summary.json").write_text('{"steps": 4, "last_lo')  # cut off by a full disk
    with (runs / "fast" / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 5, "loss": \n')
    (checkpoints / "slow" / "recipe.toml").write_text("[model\nname = ")
    (runs / "slow" / "train.log").unlink()
    (runs / "empty").mkdir()  # not a run folder: skipped
    listed = {run["name"]: run for run in _json("runs", "--runs-dir", str(runs), "--checkpoints-dir", str(checkpoints), "--json")}
    assert set(listed) == {"fast", "slow"}
    fast, slow = listed["fast"], listed["slow"]
    assert fast["status"] == "finished" and fast["status_note"] == "summary.json damaged"
    assert fast["steps"] == 4 and fast["final_loss"] is not None  # from metrics.jsonl
    assert any("summary.json" in p for p in fast["problems"]) and any("damaged line" in p for p in fast["problems"])
    assert slow["status"] == "finished" and slow["recipe"] == {} and slow["method"] == "sft"  # from qlora4080.json
    assert any("recipe.toml" in p for p in slow["problems"])
    code, output = _run("runs", "--runs-dir", str(runs), "--checkpoints-dir", str(checkpoints))
    assert code == 0 and "Traceback" not in output and "note: fast" in output


def test_interrupted_running_and_out_of_memory_runs(two_runs: Path, tmp_path: Path) -> None:
    runs, checkpoints = _copy_runs(two_runs, tmp_path)
    for name in ("fast", "slow"):
        (runs / name / "summary.json").unlink()
    with (runs / "fast" / "train.log").open("a") as handle:
        handle.write("2026-01-01 10:00:00 interrupted at step 3; resume with: qlora4080 train r.toml --resume\n")
    with (runs / "slow" / "train.log").open("a") as handle:
        handle.write("2026-01-01 10:00:00 out of memory at step 2: CUDA out of memory\n")

    def statuses() -> dict[str, tuple[str, str | None]]:
        listed = _json("runs", "--runs-dir", str(runs), "--checkpoints-dir", str(checkpoints), "--json")
        assert isinstance(listed, list)
        return {run["name"]: (run["status"], run["status_note"]) for run in listed}

    assert statuses() == {"fast": ("interrupted", "at step 3"), "slow": ("failed", "out of memory at step 2")}
    with holding(checkpoints / "fast", "run 'fast'"):  # the lock `train` holds while it runs
        assert statuses()["fast"] == ("running", None)
    assert statuses()["fast"][0] == "interrupted"  # released: the lock file left behind says nothing


def test_eval_results_are_listed_and_compared(two_runs: Path, tmp_path: Path) -> None:
    runs, checkpoints = _copy_runs(two_runs, tmp_path)
    report = {"data": "v.jsonl", "base": {"perplexity": 9.0}, "adapter": {"perplexity": 2.5, "usability_rate": 0.75,
                                                                          "failures": {}, "records": 4}, "records": {}}
    (runs / "slow" / "eval.json").write_text(json.dumps(report))
    listed = _json("runs", "--runs-dir", str(runs), "--checkpoints-dir", str(checkpoints), "--json")
    assert isinstance(listed, list)
    assert [run["eval_metrics"] for run in listed] == [{}, {"perplexity": 2.5, "usability_rate": 0.75, "records": 4.0}]
    code, output = _run("runs", "--runs-dir", str(runs), "--checkpoints-dir", str(checkpoints))
    assert "usability 75.0%" in output and "perplexity 2.5" in output
    code, output = _run("runs", "compare", "fast", "slow", "--runs-dir", str(runs), "--checkpoints-dir", str(checkpoints))
    assert code == 0 and "eval.json usability_rate" in output and "75.0%" in output


def test_training_writes_the_loss_plot_and_runs_plot_redraws_it(two_runs: Path, tmp_path: Path) -> None:
    written = two_runs / "runs" / "fast" / "loss.png"
    width, height = _png_size(written)
    assert width > 300 and height > 300
    out = tmp_path / "plots" / "fast.png"
    code, output = _run("runs", "plot", "fast", "--runs-dir", str(two_runs / "runs"), "--out", str(out))
    assert code == 0, output
    assert _png_size(out) == (width, height)  # loss and learning rate panels, as at the end of training


def test_preference_metrics_add_a_reward_margin_panel(tmp_path: Path) -> None:
    from qlora4080.plots import write_loss_plot

    run = tmp_path / "runs" / "dpo"
    run.mkdir(parents=True)
    lines = [{"step": s, "loss": 0.69 - 0.05 * s, "learning_rate": 1e-5, "rewards/margins": 0.1 * s} for s in range(1, 6)]
    lines.append({"step": 5, "eval_loss": 0.5, "eval_rewards/margins": 0.4})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    with_margin = _png_size(write_loss_plot(run))
    (run / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in line.items() if "rewards" not in k}) + "\n"
                                               for line in lines))
    without = _png_size(write_loss_plot(run))
    assert with_margin[1] > without[1]  # a third panel


def test_a_run_without_metrics_cannot_be_plotted(two_runs: Path, tmp_path: Path) -> None:
    runs, _ = _copy_runs(two_runs, tmp_path)
    (runs / "fast" / "metrics.jsonl").unlink()
    code, output = _run("runs", "plot", "fast", "--runs-dir", str(runs))
    assert code == 2 and "run fast has no metrics.jsonl, so there is nothing to plot" in output
    (runs / "fast" / "metrics.jsonl").write_text('{"step": 0, "train_runtime": 1.0}\n')
    code, output = _run("runs", "plot", "fast", "--runs-dir", str(runs))
    assert code == 2 and "no logged loss" in output


def test_a_failing_plot_is_a_warning_not_a_failed_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qlora4080 import plots
    from qlora4080.training.runlog import RunLog

    def broken(run_dir: Path, out: Path | None = None) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots, "write_loss_plot", broken)
    log = RunLog(tmp_path / "train.log")
    plots.plot_after_training(tmp_path, log)  # does not raise
    log.close()
    assert "warning: no loss plot: [Errno 28] No space left on device" in (tmp_path / "train.log").read_text()


def test_a_narrow_terminal_keeps_the_name_and_status_and_drops_the_least_telling_columns() -> None:
    from qlora4080.cli.runs_commands import COLUMN_WIDTHS, LIST_COLUMNS, _fitting_columns

    narrow = _fitting_columns(80)
    assert narrow[:2] == ["run", "status"] and len(narrow) < len(LIST_COLUMNS)
    assert narrow == list(LIST_COLUMNS[:len(narrow)])  # the most telling ones, in order
    assert 1 + sum(COLUMN_WIDTHS[column] + 3 for column in narrow) <= 80
    assert _fitting_columns(300) == list(LIST_COLUMNS)
    assert _fitting_columns(10) == ["run", "status"]  # never less than the name and the status


def test_non_finite_numbers_in_a_summary_are_listed_not_a_traceback(two_runs: Path, tmp_path: Path) -> None:
    """A diverged run logs NaN, and a damaged summary.json can hold anything JSON can: the table and --json still work."""
    runs, checkpoints = _copy_runs(two_runs, tmp_path)
    (runs / "fast" / "summary.json").write_text('{"steps": 4, "last_loss": NaN, "eval_loss": Infinity, "wall_seconds": NaN}')
    code, output = _run("runs", "--runs-dir", str(runs), "--checkpoints-dir", str(checkpoints))
    assert code == 0 and "Traceback" not in output and "nan" in output
    listed = subprocess.run([sys.executable, "-m", "qlora4080", "runs", "--runs-dir", str(runs), "--checkpoints-dir",
                             str(checkpoints), "--json"], capture_output=True, text=True, timeout=120)
    fast = json.loads(listed.stdout, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))[0]
    assert (fast["final_loss"], fast["eval_loss"], fast["wall_seconds"]) == (None, None, None)


def test_plot_out_never_replaces_a_file_that_is_not_a_png(two_runs: Path, tmp_path: Path) -> None:
    runs, _ = _copy_runs(two_runs, tmp_path)
    metrics = runs / "fast" / "metrics.jsonl"
    before = metrics.read_bytes()
    code, output = _run("runs", "plot", "fast", "--runs-dir", str(runs), "--out", str(metrics))
    assert code == 2 and "does not end in .png" in output and metrics.read_bytes() == before
    disguised = tmp_path / "notes.png"
    disguised.write_text("my notes")
    code, output = _run("runs", "plot", "fast", "--runs-dir", str(runs), "--out", str(disguised))
    assert code == 2 and "is not a PNG image, so it is left as it is" in output and disguised.read_text() == "my notes"
    code, output = _run("runs", "plot", "fast", "--runs-dir", str(runs), "--out", str(runs / "fast" / "loss.png"))
    assert code == 0, output  # an earlier plot is replaced


def test_a_run_can_be_named_by_its_folder(two_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(two_runs)
    compared = _json("runs", "compare", "runs/fast", "runs/slow/", "--json")
    assert isinstance(compared, dict) and compared["runs"] == ["fast", "slow"]
    code, output = _run("runs", "compare", "fast", "runs/fast")
    assert code == 2 and "compare needs at least two different runs" in output  # one run, named twice
    (tmp_path / "runs").mkdir()
    code, output = _run("runs", "plot", "runs/fast", "--runs-dir", str(tmp_path / "runs"))
    assert code == 2 and "runs/fast is a run folder outside" in output and "pass --runs-dir runs and the name fast" in output


def test_names_from_folders_are_shown_as_they_are_not_as_markup(two_runs: Path, tmp_path: Path) -> None:
    runs, checkpoints = _copy_runs(two_runs, tmp_path)
    shutil.copytree(runs / "fast", runs / "[red]copy")  # a run folder copied by hand
    code, output = _run("runs", "--runs-dir", str(runs), "--checkpoints-dir", str(checkpoints))
    assert code == 0 and "[red]copy" in output
    code, output = _run("runs", "compare", "[red]copy", "fast", "--runs-dir", str(runs), "--checkpoints-dir", str(checkpoints))
    assert code == 0 and "[red]copy" in output
    code, output = _run("runs", "plot", "[red]copy", "--runs-dir", str(runs))
    assert code == 0 and "[red]copy/loss.png" in output
