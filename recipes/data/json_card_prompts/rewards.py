"""A reward of your own for the GRPO demo: a card says null for what the sentence leaves out, never a guess.

GRPO calls it as TRL calls every reward: keyword arguments `prompts`,
`completions` (each a one-message list, `[{"role": "assistant", "content":
...}]`), `completion_ids`, and the records' own fields, here `answer` (the
reference card) and `tags`; it returns one number per completion, or None
where it has nothing to score.
"""

import json


def says_null_when_missing(completions, answer, **kwargs):
    """1 for each field the reference leaves null that the answer also leaves null; None when none is missing."""
    scores = []
    for completion, reference in zip(completions, answer):
        missing = [key for key, value in json.loads(reference).items() if value is None]
        if not missing:
            scores.append(None)  # a complete card: nothing to say here (json_fields scores it)
            continue
        try:
            card = json.loads(completion[0]["content"])
        except json.JSONDecodeError:
            card = None
        if not isinstance(card, dict):
            scores.append(0.0)
            continue
        scores.append(sum(key in card and card[key] is None for key in missing) / len(missing))
    return scores
