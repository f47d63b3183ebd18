"""Atomic file output, file hashing, and full-disk errors that say what to free.

Every file par-xl writes (TFRecord shards, metadata, the SentencePiece model, checkpoints, run
configurations, results) is first written under a temporary name in its final directory, then
renamed with `os.replace` once complete: an interrupted job never leaves a half-written file
under a final name. Temporary names hold `.tmp-<pid>` (git-ignored by `*.tmp*`); a job killed
before it could clean up leaves them behind, and `remove_temporaries` clears them.
"""

import contextlib
import errno
import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

_TEMPORARY = re.compile(r"\.tmp-\d+")


def temporary_name(path: str | os.PathLike, suffix: str = "") -> Path:
    """The temporary name `path` is written under before it is renamed into place.

    `<name>.tmp-<pid>`; with `suffix` (a writer that insists on how a file name ends, e.g.
    Keras's `save_weights` on `.weights.h5`) the suffix stays last:
    `ckpt.weights.h5` -> `ckpt.tmp-<pid>.weights.h5`.
    """
    path = Path(path)
    name = path.name
    if suffix:
        if not name.endswith(suffix) or name == suffix:
            raise ValueError(f"{path} does not end with {suffix!r}.")
        name = name[: -len(suffix)]
    return path.with_name(f"{name}.tmp-{os.getpid()}{suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path to write (see `temporary_name`); renames it to `path` if the
    block completes.

    If the block raises (or is interrupted), the temporary file is removed and `path` is left
    untouched.
    """
    tmp = temporary_name(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def remove_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Deletes the temporary files (`*.tmp-<pid>*`) in `directory`; returns them.

    Only for a directory no other process is writing: the caller holds its lock.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if p.is_file() and _TEMPORARY.search(p.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes; training checks the SentencePiece model against metadata."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DiskFull(RuntimeError):
    """A write failed for lack of space; the message says where and how much to free."""


def is_out_of_space(error: BaseException) -> bool:
    """Whether `error` is a full disk or quota (h5py reports it only in its message)."""
    if not isinstance(error, OSError):
        return False
    return error.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(error)


def megabytes(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:,.1f} MB"


@contextlib.contextmanager
def reporting_full_disk(path: str | os.PathLike, needed_bytes: int = 0, advice: str = ""):
    """Turns an out-of-space OSError raised inside the block, while writing `path`, into
    `DiskFull`: how much space the file needs, how much is free, which directory to free."""
    try:
        yield
    except OSError as error:
        if not is_out_of_space(error):
            raise
        directory = Path(path).parent
        try:
            free = megabytes(shutil.disk_usage(directory).free)
        except OSError:
            free = "unknown"
        need = f"about {megabytes(needed_bytes)}" if needed_bytes else "a little space"
        raise DiskFull(
            f"no space left on the device of {directory} (the filesystem mounted at "
            f"{mount_point(directory)}) while writing {Path(path).name}: it needs {need}, {free} "
            f"are free. Free space in {directory} (or on its device)"
            + (f"; {advice}" if advice else ".")
        ) from error


def mount_point(path: str | os.PathLike) -> Path:
    """The mount point of the filesystem `path` (or its nearest existing parent) is on."""
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path
