"""A reward of your own for the GRPO demo: an answer that works from the question's numbers.

GRPO calls it as TRL calls every reward: keyword arguments `prompts` (each a
message list), `completions` (each a one-message list, `[{"role":
"assistant", "content": ...}]`), `completion_ids`, and the records' own fields
("answer", "tags"); it returns one number per completion, or None where it has
nothing to score.
"""

import re


def uses_the_numbers(prompts, completions, **kwargs):
    """The share of the question's numbers the answer works with (0.5: one of two)."""
    scores = []
    for prompt, completion in zip(prompts, completions):
        given = set(re.findall(r"\d+", prompt[-1]["content"]))
        if not given:
            scores.append(None)
            continue
        used = set(re.findall(r"\d+", completion[0]["content"]))
        scores.append(len(given & used) / len(given))
    return scores
