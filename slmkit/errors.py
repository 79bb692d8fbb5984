"""The one error type for mistakes a user can fix, what a stop signal raises, and the file system's refusals told
as such a mistake.

The CLI prints a `SlmkitError` (and a refused write, through `file_system_error`) as a single message and exits
non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import signal


class SlmkitError(Exception):
    """A user-fixable problem: the message says what was wrong and what to do about it."""

    exit_code = 2

    def __str__(self) -> str:
        # Raised in a DataLoader worker (a streamed shard that cannot be fetched), the error comes back re-raised by
        # torch with the worker's whole traceback as its message: the user gets the original message alone.
        message = super().__str__()
        if message.startswith("Caught ") and "Original Traceback" in message:
            return message.rstrip().rsplit(f"{type(self).__name__}: ", 1)[-1]
        return message


class Stopped(SlmkitError):
    """A command stopped by a signal, after saving what it could (training: a checkpoint); the exit status is the
    shell's for that signal (130 for SIGINT, 143 for SIGTERM), so `train && export` goes no further."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's preemption, `timeout`, `kill`) raised where the command is, as Ctrl-C raises
    KeyboardInterrupt: the same clean-up runs for both."""

    signum = signal.SIGTERM


# The file system's answers that a user settles by choosing another place or making room, with what to do.
_REMEDIES = {
    errno.ENOSPC: "the disk is full: free space there, or write elsewhere",
    errno.EDQUOT: "the disk quota is used up: free space there, or write elsewhere",
    errno.EFBIG: "the file is larger than the file system (or this process's file-size limit) allows: write elsewhere, "
                 "or raise the limit",
    errno.EROFS: "the file system is read-only: choose a writable location",
    errno.EACCES: "permission denied: choose a location you may use, or change its permissions",
    errno.EPERM: "the operation is not permitted there: choose another location, or change its permissions",
    errno.ENOTDIR: "a part of this path is a file where a folder is needed: point it at a folder (out_dir, "
                   "data.prepared_dir, $SLMKIT_CACHE and other folder settings)",
    errno.EEXIST: "a file is in the way where a folder is needed: move it, or choose another path",
    errno.EISDIR: "this is a folder where a file is needed: give a file path",
}


def file_system_error(err: OSError) -> SlmkitError | None:
    """The message for an OSError that the user's choice of place explains (full disk, read-only, a file in the way),
    naming the path and what to do; None for any other OSError (a bug, which keeps its traceback)."""
    remedy = _REMEDIES.get(err.errno)
    if remedy is None:
        return None
    where = f"{err.filename}" if err.filename is not None else "a file"
    return SlmkitError(f"cannot write {where}: {remedy}. Files are written whole or not at all, so what was there "
                       "before is intact; run the command again" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
                       else f"cannot use {where}: {remedy}")
