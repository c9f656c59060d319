"""A resumed run continues the run it names: its recipe snapshot decides, not today's recipe file.

Resuming with a different LoRA shape once died in a 500-line traceback and
rewrote the snapshot to disagree with the adapter; resuming with another
max_steps silently bent the schedule. Now every difference from the snapshot
is either safe (how often to log, save or evaluate: applied and recorded) or
refused, all of them listed, before anything loads.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import QloraError
from ..recipe import Recipe, recipe_tables
from ..toml_io import dumps_toml, flatten_table, loads_toml

# Changing these on resume leaves the adapter, the data order and the schedule as they were.
SAFE_ON_RESUME = frozenset({
    "training.logging_steps", "training.save_steps", "training.save_total_limit", "training.eval_steps",
})
# Where outputs go and what the run is called: they locate the run rather than shape it.
IGNORED_ON_RESUME = ("output.",)


def differences(snapshot_text: str, recipe: Recipe) -> dict[str, tuple[object, object]]:
    """key -> (value in the run's snapshot, value now), for every key that differs."""
    before = flatten_table(loads_toml(snapshot_text))
    now = flatten_table(loads_toml(recipe.to_toml()))
    # A key the snapshot lacks was added to the recipe after the run started: the run had its default.
    before |= {key: default for key in set(now) - set(before) if (default := schema_default(key)) is not None}
    return {key: (before.get(key), now.get(key)) for key in sorted(set(before) | set(now))
            if before.get(key) != now.get(key) and not key.startswith(IGNORED_ON_RESUME)}


def schema_default(key: str) -> object:
    """The default of a recipe key ("training.early_stopping_patience"), as TOML reads it back; None if it has none."""
    section, _, name = key.partition(".")
    tables = recipe_tables()
    field = tables[section].model_fields.get(name) if section in tables else None
    if field is None or field.is_required():
        return None
    value = field.get_default(call_default_factory=True)
    return loads_toml(dumps_toml({"v": value}))["v"] if value is not None else None


def check_resume(recipe: Recipe, snapshot: Path, run_name: str) -> list[str]:
    """The safe changes, as lines for the log; QloraError listing every change that is not safe."""
    if not snapshot.is_file():
        return [f"note: run '{run_name}' has no recipe snapshot ({snapshot.name}); resuming with the recipe as given"]
    try:
        changed = differences(snapshot.read_text(encoding="utf-8"), recipe)
    except (ValueError, RecursionError) as error:  # TOMLDecodeError, UnicodeDecodeError: cut short by a kill
        raise QloraError(f"the run's recipe snapshot {snapshot} is damaged ({str(error).splitlines()[0]}), so the "
                         "recipe cannot be checked against the run", where=str(snapshot),
                         hint=f"if the recipe is unchanged, replace {snapshot.name} with the TOML that "
                         f"`qlora4080 train RECIPE --dry-run` prints, then resume; or start a new run") from None
    refused = {key: values for key, values in changed.items() if key not in SAFE_ON_RESUME}
    if refused:
        lines = "; ".join(f"{key}: run has {_show(old)}, now {_show(new)}" for key, (old, new) in refused.items())
        raise QloraError(
            f"cannot resume run '{run_name}' with a different recipe: {lines}",
            where=str(snapshot),
            hint="resume with the same recipe and --set values the run started with (the command printed when it "
                 "stopped), or start a new run without --resume. Only logging_steps, save_steps, "
                 "save_total_limit and eval_steps may change on resume",
        )
    return [f"resume: {key} changed from {_show(old)} to {_show(new)}" for key, (old, new) in changed.items()]


def _show(value: object) -> str:
    return "(not set)" if value is None else repr(value)
