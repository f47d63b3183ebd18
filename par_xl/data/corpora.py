"""Long-document corpora from files on this machine: one file, one document.

The Python standard library of the interpreter running the build (`python_stdlib`), or any set
of files named by a glob (`--input_files='src/**/*.py'`), is written as the three text files
that `build_data` reads (`train.txt`, `valid.txt`, `test.txt`), each document a file:

- Which split a file goes to depends only on its path relative to the corpus root: the first 8
  bytes of the SHA-256 of that path (POSIX form, UTF-8), as a fraction of 2^64, below
  `valid_fraction` is valid, below `valid_fraction + test_fraction` test, else train. Adding or
  removing a file never moves another one, and every machine splits the same files alike.
- Each document starts with a header line, `#@ file: <relative path>` (`DOCUMENT_HEADER`), then
  the file's text exactly as it is, its last line ended if it was not. The build marks a
  document start at each header (`DOCUMENT_START`, the `--document_start` of such a build), so
  attention, the XL memory, the kNN stores and the recurrent state stop at the file's start.
  A file that holds a line the header pattern matches would be cut in two: it is left out and
  named, as are files that are not UTF-8, empty files, and files that hold "▁" (U+2581,
  SentencePiece's mark of a space, which would decode as a space: every document kept
  round-trips through the tokenizer byte for byte; the standard library holds none).
- `corpus.json` beside the text files records what was read: the corpus, the root, the Python
  version, the SHA-256 of the sorted list of relative paths kept (`file_list_sha256`), the
  fractions, per split the files, documents and bytes, and the files left out and why. The
  build copies it into each split's `metadata.json` (`corpus`).

`python_stdlib` reads `sysconfig.get_paths()["stdlib"]`: every `*.py` below it but
`site-packages/` and `__pycache__/`; the regression tests (`test/`, 820 files and 17 MB of
Python 3.11's 1,790 and 31.5 MB, some of them deliberately not UTF-8 or not Python) are left out
unless `include_tests`, and so is `pydoc_data/topics.py`, generated: the documentation's text as
one dict literal (0.76 MB, 5% of the rest, it would be 58% of the valid split). Python 3.11.7:
970 files, 963 kept (7 empty), 13.7 MB; valid 50 files, 0.54 MB; test 51, 0.62 MB; 8 and 9
files of each over 24 kB (about 8k tokens). Nothing is downloaded; nothing of it is committed.
"""

import glob
import hashlib
import json
import logging
import os
import re
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from par_xl.data.errors import DataError
from par_xl.data.tokenizer import WORD_BOUNDARY
from par_xl.files import atomic_write_text

CORPORA = ("python_stdlib",)
# Standard library files that are not source code, left out of `python_stdlib`.
STDLIB_GENERATED = {
    "pydoc_data/topics.py": "generated: the documentation's text as one dict literal",
}
DOCUMENT_HEADER = "#@ file: {path}"
DOCUMENT_START = r"#@ file: .+"  # `--document_start` of a corpus build: the header, anywhere
MANIFEST_FILE = "corpus.json"
# build_data.py's tokenizer and document flags for a corpus of files (where not given).
SOURCE_CODE = dict(lowercase=False, unk_marker="", keep_whitespace=True,
                   document_start=DOCUMENT_START, document_start_isolated=False)  # fmt: skip
SPLIT_ORDER = ("train", "valid", "test")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CorpusFiles:
    """A corpus's files: `root` and the paths below it, relative, sorted (POSIX form)."""

    name: str
    root: Path
    paths: tuple[str, ...]
    description: str  # how they were chosen, for the manifest
    excluded: dict = field(default_factory=dict)  # relative path -> why, for the manifest


@dataclass
class CorpusManifest:
    """What `prepare_corpus` wrote (`corpus.json`)."""

    corpus: str
    description: str
    root: str
    python_version: str
    file_list_sha256: str
    valid_fraction: float
    test_fraction: float
    splits: dict = field(default_factory=dict)  # split -> {"files", "bytes", "paths_sha256"}
    left_out: dict = field(default_factory=dict)  # relative path -> why

    def to_json(self):
        return json.dumps(self.__dict__, indent=2) + "\n"


def python_stdlib_files(include_tests=False):
    """The standard library's `*.py` files of this interpreter (see the module docstring)."""
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    if not root.is_dir():
        raise DataError(f"the standard library of {sys.executable} is not at {root}")
    paths = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if "site-packages" in parts or "__pycache__" in parts:
            continue
        if parts[0] == "test" and not include_tests:
            continue
        if path.relative_to(root).as_posix() in STDLIB_GENERATED:
            continue
        paths.append(path.relative_to(root).as_posix())
    version = ".".join(map(str, sys.version_info[:3]))
    tests = "with" if include_tests else "without"
    description = f"Python {version} standard library *.py, {tests} test/"
    excluded = {p: why for p, why in STDLIB_GENERATED.items() if (root / p).is_file()}
    return CorpusFiles("python_stdlib", root, tuple(sorted(paths)), description, excluded)


def glob_files(pattern):
    """The files a glob names (`**` matches any depth), relative to the pattern's directory
    before its first wildcard."""
    matches = [Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True)]
    files = sorted(p.resolve() for p in matches if p.is_file())
    if not files:
        raise DataError(f"--input_files={pattern!r} names no file; expected a glob such as "
                        "'src/**/*.py' (quoted, so that the shell does not expand it)")  # fmt: skip
    fixed = []
    for part in Path(os.path.expanduser(pattern)).parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    root = Path(*fixed).resolve() if fixed else Path.cwd().resolve()
    root = root if root.is_dir() else root.parent
    if not all(p.is_relative_to(root) for p in files):  # e.g. a pattern with "..": common root
        root = Path(os.path.commonpath([str(p.parent) for p in files]))
    paths = tuple(sorted(p.relative_to(root).as_posix() for p in files))
    return CorpusFiles("input_files", root, paths, f"--input_files={pattern}")


def split_of(relative_path, valid_fraction, test_fraction):
    """The split of a file, from its relative path alone (see the module docstring)."""
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    if fraction < valid_fraction:
        return "valid"
    if fraction < valid_fraction + test_fraction:
        return "test"
    return "train"


def list_sha256(paths):
    """SHA-256 of the sorted relative paths, one per line: the file list's fingerprint."""
    return hashlib.sha256("".join(f"{p}\n" for p in sorted(paths)).encode("utf-8")).hexdigest()


def prepare_corpus(files, directory, valid_fraction=0.05, test_fraction=0.05, overwrite=False):
    """Writes `files` (`CorpusFiles`) as `<directory>/{train,valid,test}.txt` and
    `corpus.json`; returns the `CorpusManifest`.

    Raises:
        DataError: bad fractions, a split left without files, an existing corpus without
            `overwrite`.
    """
    for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise DataError(f"--{name}={value}: expected a fraction in (0, 1)")
    if valid_fraction + test_fraction >= 1.0:
        raise DataError(
            f"--valid_fraction + --test_fraction = {valid_fraction + test_fraction}: expected "
            "less than 1, to leave files for training"
        )
    directory = Path(directory)
    existing = [s for s in SPLIT_ORDER if (directory / f"{s}.txt").exists()]
    if existing and not overwrite:
        raise DataError(
            f"{directory} already holds {', '.join(f'{s}.txt' for s in existing)}; pass "
            "--overwrite to write the corpus again, or choose another --corpus_directory"
        )
    header = re.compile(DOCUMENT_START)
    texts = {split: [] for split in SPLIT_ORDER}
    kept = {split: [] for split in SPLIT_ORDER}
    size = {split: 0 for split in SPLIT_ORDER}
    left_out = dict(files.excluded)
    for path in files.paths:
        reason, text = _read_document(files.root / path, header)
        if reason:
            left_out[path] = reason
            continue
        split = split_of(path, valid_fraction, test_fraction)
        document = DOCUMENT_HEADER.format(path=path) + "\n" + text
        texts[split].append(document if document.endswith("\n") else document + "\n")
        kept[split].append(path)
        size[split] += len(text.encode("utf-8"))
    empty = [split for split in SPLIT_ORDER if not kept[split]]
    if empty:
        raise DataError(
            f"{len(files.paths)} files ({files.description}) leave no file for the split(s) "
            f"{', '.join(empty)}; give more files or larger fractions"
        )
    directory.mkdir(parents=True, exist_ok=True)
    for split in SPLIT_ORDER:
        atomic_write_text(directory / f"{split}.txt", "".join(texts[split]))
    version = ".".join(map(str, sys.version_info[:3]))
    manifest = CorpusManifest(
        corpus=files.name,
        description=files.description,
        root=str(files.root),
        python_version=version,
        file_list_sha256=list_sha256([p for split in SPLIT_ORDER for p in kept[split]]),
        valid_fraction=valid_fraction,
        test_fraction=test_fraction,
        splits={split: {"files": len(kept[split]), "bytes": size[split],
                        "paths_sha256": list_sha256(kept[split])} for split in SPLIT_ORDER},
        left_out=left_out,
    )  # fmt: skip
    atomic_write_text(directory / MANIFEST_FILE, manifest.to_json())
    log.info(
        "corpus %s (%s) from %s: %s; %d files left out",
        files.name, files.description, files.root,
        ", ".join(f"{s} {len(kept[s])} files {size[s]:,} bytes" for s in SPLIT_ORDER),
        len(left_out),
    )  # fmt: skip
    return manifest


def read_manifest(directory):
    """`<directory>/corpus.json` as a dict, or None when the directory holds none."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {path}: {error}") from None


def _read_document(path, header):
    """`(reason it is left out or "", its text)`."""
    try:
        data = path.read_bytes()
    except OSError as error:
        return f"unreadable: {error.strerror}", ""
    if not data.strip():
        return "empty", ""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8", ""
    if WORD_BOUNDARY in text:
        return f"holds {WORD_BOUNDARY!r} (U+2581), which the tokenizer would decode as a space", ""
    for number, line in enumerate(text.split("\n"), 1):
        if header.fullmatch(line):
            return f"line {number} looks like a document header ({DOCUMENT_START})", ""
    return "", text
