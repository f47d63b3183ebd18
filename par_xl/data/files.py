"""Atomic file output and file hashing.

Every file the build writes (TFRecord shards, metadata, unigram file, SentencePiece model) is first
written under a temporary name in its final directory, then renamed with `os.replace` once complete:
an interrupted build never leaves a half-written file under a final name. Temporary names end in
`.tmp-<pid>` (git-ignored by `*.tmp*`).
"""

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path


def temporary_name(path: str | os.PathLike) -> Path:
    """The temporary name `path` is written under before it is renamed into place."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path to write; renames it to `path` if the block completes.

    If the block raises (or is interrupted), the temporary file is removed and `path` is left
    untouched.
    """
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes; training checks the SentencePiece model against metadata."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
