"""grpo's rewards: the built-ins (reward_names.py lists them), functions of yours, and the guard around every one.

Every reward has TRL's signature, `f(prompts, completions, completion_ids,
**columns) -> list[float | None]`: one value per completion, None for "not
scored" (TRL leaves it out of the means). A completion is a one-message list
(`[{"role": "assistant", "content": ...}]`) for chat prompts, as TRL passes
it. `columns` holds each record's "answer" (the reference, a string) and
"tags", repeated once per completion of its prompt, plus TRL's trainer_state.

The guard turns a reward that raises, or returns the wrong shape, into an
error naming the reward, the prompt and the value, instead of a traceback
from inside TRL's training step.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
import math
import numbers
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ..errors import QloraError
from ..eval_rules import json_check, json_object
from ..task_metrics import exact_match as number_match
from ..task_metrics import marked_answer
from .reward_names import BUILTIN_REWARDS

if TYPE_CHECKING:
    from ..model_types import Tokenizer
    from .grpo_settings import GRPOSection, RewardSource

RewardValue = float | None
RewardFunction = Callable[..., Sequence[RewardValue]]
"""TRL's reward signature: (prompts=, completions=, completion_ids=, **columns) -> one value per completion."""


@dataclass(frozen=True)
class RewardContext:
    """What the built-ins need to know of the run."""

    max_completion_length: int
    stop_ids: frozenset[int]
    """Token ids that end an answer (the template's end of turn and the EOS)."""


def completion_text(completion: object) -> str:
    """The answer's text, from TRL's one-message list (chat prompts) or a plain string."""
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content")
        return content if isinstance(content, str) else ""
    return completion if isinstance(completion, str) else ""


def prompt_text(prompt: object) -> str:
    """A prompt as one line for an error or a log: its last message's text."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        prompt = prompt[-1].get("content", "")
    text = " ".join(str(prompt).split())
    return text if len(text) <= 200 else text[:200] + "..."


# ---- the built-ins ---------------------------------------------------------------------------------------


def _references(kwargs: dict[str, object], count: int) -> list[str | None]:
    answers = kwargs.get("answer")
    if not isinstance(answers, list):
        return [None] * count
    return [a if isinstance(a, str) and a != "" else None for a in answers]


def builtin_reward(name: str, context: RewardContext) -> RewardFunction:
    """The built-in reward `name` (one of BUILTIN_REWARDS) for this run."""

    def exact_match(completions: list[object], **kwargs: object) -> list[RewardValue]:
        scores: list[RewardValue] = []
        for completion, reference in zip(completions, _references(kwargs, len(completions))):
            found = number_match(completion_text(completion), reference) if reference is not None else None
            scores.append(None if found is None or found.correct is None else float(found.correct))
        return scores

    def answer_format(completions: list[object], **kwargs: object) -> list[RewardValue]:
        return [float(marked_answer(completion_text(c))) for c in completions]

    def json_valid(completions: list[object], **kwargs: object) -> list[RewardValue]:
        return [float(json_object(completion_text(c)) is not None) for c in completions]

    def json_keys(completions: list[object], **kwargs: object) -> list[RewardValue]:
        scores: list[RewardValue] = []
        for completion, reference in zip(completions, _references(kwargs, len(completions))):
            _valid, same = json_check(completion_text(completion).strip(), reference)
            scores.append(None if same is None else float(same))
        return scores

    def json_fields(completions: list[object], **kwargs: object) -> list[RewardValue]:
        scores: list[RewardValue] = []
        for completion, reference in zip(completions, _references(kwargs, len(completions))):
            expected = json_object(reference) if reference is not None else None
            if not expected:
                scores.append(None)
                continue
            given = json_object(completion_text(completion)) or {}
            scores.append(sum(key in given and given[key] == value for key, value in expected.items()) / len(expected))
        return scores

    def stopped(completion_ids: list[list[int]], **kwargs: object) -> list[RewardValue]:
        return [float(bool(ids) and ids[-1] in context.stop_ids) for ids in completion_ids]

    def length_penalty(completion_ids: list[list[int]], **kwargs: object) -> list[RewardValue]:
        return [-min(len(ids), context.max_completion_length) / context.max_completion_length for ids in completion_ids]

    functions: dict[str, RewardFunction] = {f.__name__: f for f in (
        exact_match, answer_format, json_valid, json_keys, json_fields, stopped, length_penalty)}
    assert set(functions) == set(BUILTIN_REWARDS), "every built-in named in reward_names.py is implemented here"
    return functions[name]


# ---- functions of yours ------------------------------------------------------------------------------------


def function_problem(path: Path, function: str) -> str | None:
    """Why `function` in `path` cannot be a reward, read without running the file (checked when the recipe loads)."""
    if not path.is_file():
        return f"the reward file {path} does not exist"
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as error:
        return f"the reward file {path} does not parse: line {error.lineno}: {error.msg}"
    except (OSError, ValueError) as error:
        return f"the reward file {path} cannot be read: {error}"
    defined, named = _module_names(tree.body)
    if function not in named:
        known = ", ".join(sorted(defined)) or "none"
        return f"the reward file {path} has no function {function!r} (functions defined there: {known})"
    return None


def _module_names(body: list[ast.stmt]) -> tuple[set[str], set[str]]:
    """(functions defined, every name bound) at a module's top level, inside if/try/with blocks too."""
    functions: set[str] = set()
    names: set[str] = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            (functions if not isinstance(node, ast.ClassDef) else names).add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for target in targets for t in ast.walk(target) if isinstance(t, ast.Name))
        for block in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(node, block, None)
            if isinstance(inner, list) and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                statements = [s for item in inner for s in (item.body if isinstance(item, ast.ExceptHandler) else [item])]
                more_functions, more_names = _module_names(statements)
                functions |= more_functions
                names |= more_names
    return functions, names | functions


def load_function(path: Path, function: str) -> Callable[..., object]:
    """Import the file and return its function; a file that fails to import is named with its error."""
    where = "[grpo] rewards"
    if problem := function_problem(path, function):
        raise QloraError(problem, where=where)
    name = f"qlora4080_rewards_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None  # a .py file that exists
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import would: dataclasses and pickling look their module up there
    sys.path.insert(0, str(path.parent))  # so the file can import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        sys.modules.pop(name, None)
        raise QloraError(f"the reward file {path} raised {type(error).__name__} when imported: {error}", where=where,
                         hint="run `python FILE` to see the whole error") from error
    finally:
        sys.path.remove(str(path.parent))
    found = getattr(module, function, None)
    if not callable(found):
        raise QloraError(f"{function} in {path} is not a function", where=where)
    return cast("Callable[..., object]", found)


# ---- the guard ---------------------------------------------------------------------------------------------


class RewardFailed(QloraError):
    """A reward function raised or returned something that is not one score per completion."""


def guarded(function: Callable[..., object], label: str, origin: str) -> RewardFunction:
    """`function` under the name `label`, stopping with a readable error when it raises or returns a wrong shape."""

    def check(value: object, kwargs: dict[str, object]) -> list[RewardValue]:
        completions = cast("list[object]", kwargs.get("completions") or [])
        prompts = cast("list[object]", kwargs.get("prompts") or [])
        expected = len(completions)
        first = prompt_text(prompts[0]) if prompts else "?"
        if isinstance(value, (str, bytes, dict)) or not isinstance(value, Sequence) and not hasattr(value, "tolist"):
            raise RewardFailed(f"reward {label} ({origin}) returned {_shown(value)} for {expected} completions (first "
                               f"prompt: {first!r})", where="[grpo] rewards",
                               hint=f"return a list of {expected} numbers, one per completion (None: not scored)")
        values = list(cast("Sequence[object]", value.tolist() if hasattr(value, "tolist") else value))
        if len(values) != expected:
            raise RewardFailed(f"reward {label} ({origin}) returned {len(values)} values for {expected} completions "
                               f"(first prompt: {first!r})", where="[grpo] rewards",
                               hint="return one number per completion, in the order of `completions`")
        scores: list[RewardValue] = []
        for index, item in enumerate(values):
            if item is None:
                scores.append(None)
                continue
            # TRL takes whatever torch.tensor takes: bools and numpy scalars are numbers too
            if not isinstance(item, numbers.Real) or not math.isfinite(float(item)):
                prompt = prompt_text(prompts[index]) if index < len(prompts) else first
                raise RewardFailed(f"reward {label} ({origin}) returned {_shown(item)} for completion {index} of the "
                                   f"prompt {prompt!r}: {_shown(completion_text(completions[index]))}",
                                   where="[grpo] rewards", hint="return a finite number per completion (None: not scored)")
            scores.append(float(item))
        return scores

    def failed(error: Exception, kwargs: dict[str, object]) -> RewardFailed:
        prompts = cast("list[object]", kwargs.get("prompts") or [])
        return RewardFailed(f"reward {label} ({origin}) raised {type(error).__name__}: {error} (first prompt of the "
                            f"batch: {prompt_text(prompts[0]) if prompts else '?'!r})", where="[grpo] rewards",
                            hint="fix the function; it is called with prompts, completions, completion_ids and the "
                                 "record's answer and tags as keyword arguments")

    if _is_async(function):
        async def guarded_async(**kwargs: object) -> list[RewardValue]:
            try:
                value = await cast("Callable[..., Awaitable[object]]", function)(**kwargs)
            except RewardFailed:
                raise
            except Exception as error:
                raise failed(error, kwargs) from error
            return check(value, kwargs)

        guarded_async.__name__ = guarded_async.__qualname__ = label
        return cast("RewardFunction", guarded_async)

    @functools.wraps(function)
    def guarded_sync(**kwargs: object) -> list[RewardValue]:
        try:
            value = function(**kwargs)
        except RewardFailed:
            raise
        except Exception as error:
            raise failed(error, kwargs) from error
        return check(value, kwargs)

    guarded_sync.__name__ = guarded_sync.__qualname__ = label  # TRL logs rewards/<__name__>/mean
    del guarded_sync.__wrapped__  # TRL must call the guard, not look through it
    return guarded_sync


def _is_async(function: Callable[..., object]) -> bool:
    """An async function, or an object whose __call__ is one (TRL awaits both)."""
    call = type(function).__call__ if not inspect.isfunction(function) and not inspect.ismethod(function) else None
    return inspect.iscoroutinefunction(function) or (call is not None and inspect.iscoroutinefunction(call))


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:120] + "..."


# ---- a recipe's rewards --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rewards:
    functions: list[RewardFunction]
    weights: list[float]

    @property
    def names(self) -> list[str]:
        return [f.__name__ for f in self.functions]


def build_rewards(settings: GRPOSection, resolve: Callable[[str], Path], context: RewardContext) -> Rewards:
    """The recipe's [grpo] rewards as guarded functions, with their weights."""
    return Rewards([reward_function(source, resolve, context) for source in settings.rewards],
                   [source.weight for source in settings.rewards])


def reward_function(source: RewardSource, resolve: Callable[[str], Path], context: RewardContext) -> RewardFunction:
    if source.name is not None:
        return guarded(builtin_reward(source.name, context), source.name, "built-in")
    assert source.path is not None and source.function is not None  # RewardSource checks it has both
    path = resolve(source.path)
    return guarded(load_function(path, source.function), source.function, str(path))


def rewards_problem(settings: GRPOSection, resolve: Callable[[str], Path]) -> str | None:
    """What is wrong with the recipe's rewards before anything runs: a missing file or function, a repeated name."""
    seen: set[str] = set()
    for number, source in enumerate(settings.rewards, start=1):
        if source.path is not None and source.function is not None and \
                (problem := function_problem(resolve(source.path), source.function)):
            return f"[grpo] rewards entry {number}: {problem}"
        if source.label in seen:
            return (f"[grpo] rewards entry {number}: two rewards are named {source.label!r}; their metrics would mix "
                    "(give each reward once, or rename one of your functions)")
        seen.add(source.label)
    return None


def recipe_rewards(settings: GRPOSection, resolve: Callable[[str], Path], tokenizer: Tokenizer) -> Rewards:
    """A [grpo] table's rewards, guarded, for this tokenizer's end of turn (`resolve`: where a reward file is)."""
    from ..data.render import end_of_turn_ids  # where an answer ends, as chat and eval stop

    context = RewardContext(settings.max_completion_length, frozenset(end_of_turn_ids(tokenizer)))
    return build_rewards(settings, resolve, context)
