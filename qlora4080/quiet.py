"""Silence library chatter that would bury qlora4080's own output (progress bars, known deprecations)."""

from __future__ import annotations

import logging
import os
import warnings

# Loggers that speak while their library is imported, about things a qlora4080 user cannot act on: torchao's
# optional CUDA extensions (absent from a CPU build), bitsandbytes' optional `kernels` package (a faster CPU
# 4-bit matmul), torch's notice about enum constants registered by torchao. Errors still show.
IMPORT_CHATTER = ("torchao", "bitsandbytes.backends.cpu.ops", "torch.utils._pytree")


def quiet_import_chatter() -> None:
    """Before torch and friends are imported (costs nothing: logging only)."""
    for name in IMPORT_CHATTER:
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
