"""`qlora4080 doctor`: can this machine train, and if not, what to do.

One row per fact (Python, torch and the card, the locked package versions,
unsloth, bitsandbytes, GGUF tooling, disk, hub), each ok / warn / fail / info
with a next step, then one verdict. `fail` is kept for what makes training
impossible, so the exit code is simply "any fail row".

`training_blockers` is the same judgement for one recipe, without loading a
model, for `train` to call first.
"""

from __future__ import annotations

from .plan import Problem, TrainingPlan, plan_training, training_blockers
from .report import Report, Row, print_report
from .run import run_doctor

__all__ = ["Problem", "Report", "Row", "TrainingPlan", "plan_training", "print_report", "run_doctor", "training_blockers"]
