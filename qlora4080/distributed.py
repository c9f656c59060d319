"""Several processes (torchrun, accelerate launch): who is process 0, and how the others follow it.

Every process runs the same `train`. Process 0 (global rank 0) alone decides what
must be decided once (the run name and folders, the data build) and alone writes
(logs, metrics, checkpoints, the adapter). The others wait for its decision and
then read what it made. A decision travels as an outcome, a value or process 0's
error, so a refusal on process 0 stops every process with a non-zero exit instead
of leaving them at a barrier. All reads of the launcher's environment live here,
and torch is imported only once several processes are really in use.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import QloraError

T = TypeVar("T")

TIMEOUT_ENV = "QLORA4080_DDP_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 1800  # transformers' own ddp_timeout: long enough for process 0 to build a large data mix


class StoppedByMainProcess(QloraError):
    """Raised on processes 1..N-1 when process 0 failed; process 0 shows the full error, so this one is not printed."""

    shown_by_main_process = True


def world_size() -> int:
    """How many processes train together (WORLD_SIZE, set by torchrun and accelerate launch; 1 otherwise)."""
    return _env_int("WORLD_SIZE", 1)


def process_index() -> int:
    """This process's global rank (RANK); 0 when not launched by a launcher."""
    return _env_int("RANK", 0)


def local_process_index() -> int:
    """This process's rank on its own machine (LOCAL_RANK): the GPU it trains on."""
    return _env_int("LOCAL_RANK", 0)


def is_distributed() -> bool:
    return world_size() > 1


def is_main_process() -> bool:
    return process_index() == 0


def sharding_strategy() -> str | None:
    """The sharding accelerate launch set up from its config file: "FSDP", "DeepSpeed", or None (plain DDP)."""
    if _env_flag("ACCELERATE_USE_FSDP"):
        return "FSDP"
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        return "DeepSpeed"
    return None


def check_sharding_supported(backend: str) -> None:
    """A backend that is not shardable (unsloth: its patched kernels expect whole weights) trains under plain DDP only."""
    from .backend_capabilities import backends_that, capabilities

    strategy = sharding_strategy()
    if backend == "auto" or strategy is None or capabilities(backend).shardable:
        return  # "auto" is checked again once the backend is chosen
    raise QloraError(f"the {backend} backend does not support {strategy} (this launch set "
                     f"ACCELERATE_USE_{strategy.upper()}=true); with several GPUs it trains as plain DDP only",
                     where="[model] backend",
                     hint=f"--set model.backend={backends_that('shardable')[0]} to shard with FSDP or DeepSpeed, or launch "
                          "plain DDP: accelerate launch --config_file accelerate/ddp.yaml -m qlora4080 train RECIPE")


def timeout_seconds() -> int:
    """How long a process waits for the others at a barrier before it fails instead of hanging."""
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    if not value:
        return DEFAULT_TIMEOUT_SECONDS
    if not value.isdigit() or int(value) == 0:
        raise QloraError(f"{TIMEOUT_ENV}={value!r} is not a whole number of seconds", where=TIMEOUT_ENV,
                         hint=f"e.g. {TIMEOUT_ENV}=3600, or unset it for the default {DEFAULT_TIMEOUT_SECONDS}")
    return int(value)


def start_process_group() -> None:
    """Join the other processes (nccl on GPUs, gloo on CPU or under `accelerate launch --cpu`), once.

    A no-op for a single process. transformers' TrainingArguments later finds this group initialised and uses it,
    so the barriers below and the trainer's all-reduces share one group and one timeout.
    """
    if not is_distributed():
        return
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    use_cuda = torch.cuda.is_available() and not _env_flag("ACCELERATE_USE_CPU")
    if use_cuda:
        torch.cuda.set_device(local_process_index())
    else:
        # accelerate names the CPU of process N "cpu:N", which torch.load cannot map a checkpoint to (resume failed)
        os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_seconds()))


def end_process_group() -> None:
    """Leave the group at the end of a command (a clean exit; nccl warns otherwise)."""
    if not is_distributed():
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def decided_by_main(decide: Callable[[], T], doing: str) -> T:
    """Process 0 runs `decide`; every process gets its result (picklable), or stops when process 0 failed.

    `doing` names the step for the message the other processes raise ("planning the run folders").
    """
    if not is_distributed():
        return decide()
    if is_main_process():
        try:
            value = decide()
        except BaseException as error:
            _broadcast_outcome((False, _describe(error)))
            raise
        _broadcast_outcome((True, value))
        return value
    try:
        succeeded, value = _broadcast_outcome(None)
    except RuntimeError as error:  # torch's DistBackendError: the wait timed out, or process 0 is gone
        raise QloraError(f"process 0 sent nothing while {doing} ({error})", where=TIMEOUT_ENV,
                         hint=f"if process 0 is still working (a large data build), wait longer: {TIMEOUT_ENV}=<seconds> "
                              f"(now {timeout_seconds()})") from None
    if not succeeded:
        raise StoppedByMainProcess(f"process 0 stopped while {doing}: {value}")
    return value  # process 0 sent the result of decide()


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is true on at least one (every process must call it, at the same point)."""
    if not is_distributed():
        return flag
    return bool(_all_reduce([int(flag)], "max")[0])


def sum_over_processes(counts: list[int]) -> list[int]:
    """Each count summed over all processes (every process must call it, at the same point)."""
    if not is_distributed():
        return counts
    return _all_reduce(counts, "sum")


def _all_reduce(values: list[int], how: str) -> list[int]:
    import torch
    import torch.distributed as dist

    # nccl reduces only tensors on the process's GPU; gloo those in memory
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if how == "max" else dist.ReduceOp.SUM)
    return [int(v) for v in tensor.tolist()]


def _broadcast_outcome(outcome: tuple[bool, Any] | None) -> tuple[bool, Any]:
    """Process 0's (succeeded, value-or-message) to everyone, within the group's timeout."""
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError("start_process_group() must run before processes exchange decisions")
    box: list[Any] = [outcome]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _describe(error: BaseException) -> str:
    if isinstance(error, QloraError):
        return f"{error.where}: {error.message}" if error.where else error.message
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    return f"{type(error).__name__}: {error}"


def _env_flag(name: str) -> bool:
    """A yes/no the launcher set ("true", "1", "yes"; anything else or unset is no)."""
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value.lstrip("-").isdigit() else default
