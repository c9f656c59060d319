"""The recipe's [kto] table (methods/kto.py declares it; feedback_records.py reads the weights too)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..recipe.section import Section


class KTOSection(Section):
    """Settings of KTO (training.method = "kto"): the recipe's [kto] table."""

    beta: float = Field(default=0.1, gt=0)
    """How far the policy may move from the reference; higher keeps it closer."""
    desirable_weight: float = Field(default=1.0, gt=0)
    """Weight of the desirable answers' loss. With more undesirable than desirable records, raise it so that
    desirable_weight x desirable records is 1 to 4/3 times undesirable_weight x undesirable records (the KTO paper)."""
    undesirable_weight: float = Field(default=1.0, gt=0)
    """Weight of the undesirable answers' loss (lower it instead when undesirable records are the many)."""
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"
    """kto: the paper's loss, with its KL estimate (needs training.batch_size >= 2); apo_zero_unpaired: APO-zero
    without a KL term, for a policy that should move away from the reference on both kinds of answer."""
    precompute_reference: bool = False
    """Compute the reference log-probabilities once before training instead of at every step."""
