"""Start training in several processes on this machine, as torchrun does (`train --processes N`).

Separate from distributed.py, which every process reads (who am I, what did process 0
decide): this is the agent that starts them, and it speaks to the user through the console.
"""

from __future__ import annotations

import os

from .console import warn


def launch_processes(processes: int, arguments: list[str]) -> int:
    """Run `python -m qlora4080 ARGUMENTS` in `processes` processes on this machine, as torchrun does; the exit code.

    This process becomes torchrun's agent (`torchrun --standalone --nproc_per_node N -m qlora4080 ...`):
    a free local port, and all processes stopped as soon as one fails. torchrun's own report of a failed
    process is a Python traceback and a log line; here the failed process has printed its error already,
    so only its exit code is passed on (or, for a process killed by a signal, which one).

    Ctrl-C reaches only this agent (torchrun starts each process in its own session); it passes the
    signal on once, so every process finishes its step and saves a checkpoint (interrupts.py), and it
    kills them after TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds: 30 in torchrun, 300 here, room for a save.
    """
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun would set 1 thread per process and warn; on CPU each process may use its share of the cores
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "300")
    for name in list(logging.root.manager.loggerDict):  # each module's logger has its own level: quiet them all
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(["--standalone", f"--nproc_per_node={processes}", "-m", "qlora4080", *arguments]))
    except SignalException as stopped:  # the processes were told and have ended (process 0 said how to resume)
        return 128 + int(stopped.sigval)
    except ChildFailedError as failed:
        rank, first = failed.get_first_failure()
        if first.exitcode > 0:
            return first.exitcode
        warn(f"process {rank} was stopped by signal {-first.exitcode} (the system's out-of-memory killer sends 9); "
             "the other processes were stopped with it")
        return 1
    return 0
