"""Perplexity from a mean cross-entropy loss, the same way in the panel, the run summary and eval."""

from __future__ import annotations

import math

OVERFLOW_GUARD = 50.0
"""exp(50) ~ 5e21: a diverged run shows an absurd number instead of raising OverflowError."""


def from_loss(mean_nll: float) -> float:
    """exp(mean negative log-likelihood per trained token)."""
    return math.exp(min(mean_nll, OVERFLOW_GUARD))
