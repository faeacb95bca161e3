"""Crash-safe writes: atomic replace with fsync, and cleanup of temporaries of killed processes."""

import os
import pathlib
import re
import shutil

_TEMPORARY = re.compile(r"^\.[^.]+\.tmp(\d+)(\..*)?$")


def temporary_path(path):
    """This process's temporary for `path`, in the same directory.

    `dir/best.weights.h5` -> `dir/.best.tmp<pid>.weights.h5` (the suffixes stay, so
    writers that check them, such as Keras's `save_weights`, accept it);
    `dir/latest` -> `dir/.latest.tmp<pid>`.
    """
    path = pathlib.Path(path)
    head, dot, rest = path.name.partition(".")
    return path.with_name(f".{head}.tmp{os.getpid()}{dot}{rest}")


def fsync(path):
    """Flush a file, or a directory's list of entries, to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write(path, write):
    """Create or replace `path` (a file or a directory) so that a crash leaves the old or the new one.

    `write(temporary)` creates the content at `temporary_path(path)`; all of it is fsynced,
    renamed over `path` (an existing directory `path` is removed first) and the
    parent directory is fsynced, so the rename itself survives a power loss. If
    `write` fails, the temporary is removed and `path` is left untouched.

    Returns:
        `path` as a `pathlib.Path`.
    """
    path = pathlib.Path(path)
    temporary = temporary_path(path)
    remove(temporary)
    try:
        write(temporary)
        for written in sorted(temporary.rglob("*"), reverse=True) + [temporary]:  # children before their directory
            fsync(written)
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(temporary, path)
    except BaseException:
        remove(temporary)
        raise
    fsync(path.parent)
    return path


def process_alive(pid):
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale_temporaries(directory):
    """Remove the `temporary_path`s in `directory` of processes that no longer run.

    A process killed during `atomic_write` leaves its temporary behind (a whole
    checkpoint, about 1 GB for the paper's 2 x 1500 LSTM). Temporaries of this process
    and of other live processes on this machine are kept, so a reader never removes
    the checkpoint a running trainer is writing; a directory shared by writers on
    several machines is not supported.

    Returns:
        the removed paths.
    """
    removed = []
    for path in pathlib.Path(directory).glob(".*.tmp*"):
        match = _TEMPORARY.match(path.name)
        if match and not process_alive(int(match.group(1))):
            remove(path)
            removed.append(path)
    return removed


def remove(path):
    """Remove a file, link or directory tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)
