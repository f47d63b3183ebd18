"""The input text: which file holds which split, and reading a file as checked UTF-8 lines.

`--input_text` is either a directory holding `train.txt`, `valid.txt` and `test.txt` (WikiText
layout, as `create_tfrecords.sh` prepares it), or one text file. A single file is built as the split
its name says (`valid.txt` -> `valid`), and as `train` when its name is none of the three.
"""

import os
from pathlib import Path

from par_xl.data.errors import DataError

SPLITS = ("train", "valid", "test")


def find_splits(input_text: str | os.PathLike) -> dict[str, Path]:
    """Maps each split to build to its text file, in the order train, valid, test."""
    path = Path(input_text)
    expected = "a text file, or a directory holding train.txt, valid.txt and test.txt"
    if path.is_dir():
        missing = [f"{split}.txt" for split in SPLITS if not (path / f"{split}.txt").is_file()]
        if missing:
            raise DataError(
                f"--input_text={input_text} is a directory without {', '.join(missing)}; "
                f"expected {expected}"
            )
        return {split: path / f"{split}.txt" for split in SPLITS}
    if path.is_file():
        return {path.stem if path.stem in SPLITS else "train": path}
    raise DataError(
        f"--input_text={input_text} does not exist; expected {expected} "
        "(create_tfrecords.sh downloads WikiText-2)"
    )


def read_lines(path: str | os.PathLike) -> list[str]:
    """Reads a UTF-8 text file as its list of lines (without the line ends).

    Lines are split on '\\n' only (not on the other separators `str.splitlines` knows), so they
    are exactly the file's lines; empty lines are kept: each still gets an end-of-line id.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    if not data.strip():
        raise DataError(f"{path} is empty; expected UTF-8 text, one paragraph or sentence a line")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}, line {line}: byte 0x{data[e.start]:02x} at byte {column} of the line is not "
            "valid UTF-8; expected UTF-8 text"
        ) from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines
