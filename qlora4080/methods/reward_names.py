"""The built-in rewards of grpo, by name, each with what it scores (rewards.py computes them).

Its own module so the recipe schema can check a name without loading any
reward code, and `qlora4080 methods` can list them.
"""

from __future__ import annotations

BUILTIN_REWARDS: dict[str, str] = {
    "exact_match": "1 when the answer's final number equals the record's \"answer\" (the number eval reads), else 0; "
                   "unscored when the reference has no number",
    "answer_format": "1 when the answer marks its final number (\\boxed{...}, \"####\", \"the answer is\", \"答案是\"), "
                     "else 0",
    "json_valid": "1 when the whole answer is one JSON object, else 0",
    "json_keys": "1 when the answer is a JSON object with exactly the keys of the reference object in \"answer\", "
                 "else 0; unscored without one",
    "json_fields": "the share of the reference object's fields the answer gives with the same value (null included), "
                   "0 for an answer that is not JSON; unscored without a reference object",
    "stopped": "1 when the answer ended with the chat template's end of turn before max_completion_length, else 0",
    "length_penalty": "minus the answer's length as a share of max_completion_length (0 for an empty answer, -1 for "
                      "one cut at the limit)",
}
"""Each built-in reward and what it gives; the reference is the record's "answer" field."""
