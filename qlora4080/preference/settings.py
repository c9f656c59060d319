"""The recipe's [preference] table: the settings dpo and orpo share (both declare it, methods/dpo.py, orpo.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..recipe.section import Section


class PreferenceSection(Section):
    """Settings of preference tuning (training.method = "dpo" or "orpo")."""

    beta: float = Field(default=0.1, gt=0)
    """dpo: how far the policy may move from the reference, higher keeps it closer; orpo: the weight of the
    odds-ratio term beside the SFT loss (ORPO's lambda)."""
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "apo_zero", "apo_down", "sppo_hard", "nca_pair"] = "sigmoid"
    """dpo only: sigmoid is the original DPO; ipo, hinge, robust, ... are TRL's variants of it."""
    precompute_reference: bool = False
    """Compute the reference log-probabilities once before training instead of at every step."""
    sft_weight: float = Field(default=0.0, ge=0)
    """dpo only: weight of an SFT loss (the chosen answers' negative log-likelihood) added to the preference loss,
    as RPO and LLaMA-Factory's pref_ftx do; it keeps the chosen answers likely while the rejected ones fall, so
    greedy answers move toward the chosen ones. 0 = plain DPO."""
