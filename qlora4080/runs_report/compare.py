"""Runs side by side: the recipe keys that differ between them, then what each run achieved."""

from __future__ import annotations

from dataclasses import dataclass

from .record import RunRecord

MISSING = "-"
# Keys that differ between any two runs without saying anything about how they trained.
_NOT_SETTINGS = ("output.run_name",)


@dataclass(frozen=True)
class Comparison:
    runs: list[RunRecord]
    recipe_differences: dict[str, list[object]]
    """recipe key -> its value in each run (None where that run's snapshot lacks it), in run order."""
    results: dict[str, list[object]]
    """result (final loss, eval metrics, wall time, peak memory) -> each run's value (None where unknown)."""

    def to_json(self) -> dict[str, object]:
        names = [run.name for run in self.runs]
        return {
            "runs": names,
            "recipe_differences": {key: dict(zip(names, values)) for key, values in self.recipe_differences.items()},
            "results": {key: dict(zip(names, values)) for key, values in self.results.items()},
            "status": {run.name: run.status.status for run in self.runs},
        }


def compare_runs(runs: list[RunRecord]) -> Comparison:
    keys = sorted({key for run in runs for key in run.recipe} - set(_NOT_SETTINGS))
    differences = {}
    for key in keys:
        values = [run.recipe.get(key) for run in runs]
        if any(value != values[0] for value in values[1:]):
            differences[key] = values
    results: dict[str, list[object]] = {
        "steps": [run.steps for run in runs],
        "final loss": [run.final_loss for run in runs],
        "eval loss": [run.eval_loss for run in runs],
        "eval perplexity": [run.eval_perplexity for run in runs],
    }
    if any(run.final_reward is not None for run in runs):  # grpo runs: what training raised
        results["final reward"] = [run.final_reward for run in runs]
    eval_keys = list(dict.fromkeys(key for run in runs for key in run.eval_metrics))
    for key in eval_keys:
        results[f"eval.json {key}"] = [run.eval_metrics.get(key) for run in runs]
    results["wall time (s)"] = [run.wall_seconds for run in runs]
    results["peak memory (GiB)"] = [run.peak_memory_gib for run in runs]
    return Comparison(runs, differences, results)
