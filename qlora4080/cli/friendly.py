"""Errors as the user should meet them: a panel saying what, where and what to do, and an exit code."""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

from ..console import console, print_error
from ..errors import QloraError

P = ParamSpec("P")
R = TypeVar("R")


def friendly_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn QloraError into a readable panel + non-zero exit; Ctrl-C into exit 130.

    OSError is the last line of defence: a folder that cannot be written, a file
    where a folder should be, a full disk can surface from any library call, and
    each is the user's to fix, not a bug. Anything else stays a traceback, so a
    real bug is never disguised as a user error.
    """

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except QloraError as error:
            print_error(error)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            console.print("\ninterrupted", style="yellow")
            raise typer.Exit(130) from None
        except OSError as error:
            print_error(os_error(error))
            raise typer.Exit(2) from None

    return wrapper


PERMISSIONS_HINT = "check the permissions of that path and the folder holding it, or choose a folder you can write to"
NOT_A_FOLDER_HINT = "a part of that path is a file, not a folder: choose another path, or move that file away"
_OS_HINTS = {
    errno.EACCES: PERMISSIONS_HINT,
    errno.EPERM: PERMISSIONS_HINT,
    errno.EROFS: "that file system is read-only: choose a folder on a writable disk",
    errno.ENOSPC: "the disk is full: free some space (old checkpoints/ and data_builds/ are large), then run again",
    errno.EDQUOT: "your disk quota is used up: free some space, then run again",
    errno.ENOTDIR: NOT_A_FOLDER_HINT,
    errno.EISDIR: "that path is a folder: give a file path instead",
    errno.ENOENT: "check that the path exists (a relative path starts from the current folder)",
}


def os_error(error: OSError) -> QloraError:
    """An operating-system refusal as a QloraError: which path, the system's reason, and what to do."""
    reason = error.strerror or str(error)
    if error.filename is not None and error.filename2 is not None:
        message = f"could not move {error.filename} to {error.filename2}: {reason}"
    elif error.filename is not None:
        message = f"could not read/write {error.filename}: {reason}"
    elif error.errno is not None:
        message = f"could not read/write a file: {reason}"
    else:  # raised by a library with its own sentence (transformers: "Can't load the model ...")
        message = str(error)
    hint = _OS_HINTS.get(error.errno or 0, "check the path or name above and try again")
    return QloraError(message, hint=hint)
