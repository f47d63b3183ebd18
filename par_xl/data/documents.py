"""Document boundaries: which tokens start a new document, from a regular expression over lines.

A document's first line is a line that `pattern` matches in full (`re.fullmatch`) and, with
`isolated`, that stands between blank lines (or the file's start and end), as WikiText's headings
do. WikiText's default pattern is its top-level heading ` = Title = `; standing alone tells it from
table rows such as ` = Played , W = ` and a citation line: in WikiText-2 train 629 lines match the
pattern, 600 of them alone, one per article (valid and test: 60 each).

The start is marked on the token *before* the document's first token: the end-of-line id that
precedes its first line (token 0 for the first line of the file). The model's output at a token
predicts the next one, so with the mark there, the prediction of the document's first token, and
of everything after it, can be made from the document alone (the end-of-line id is the same
whatever precedes it). Marks are per token of the split's id stream: `(N,)` booleans.
"""

import re
from collections.abc import Sequence

import numpy as np

from par_xl.data.errors import DataError

# WikiText's top-level heading: " = Title = " (second level is " = = Section = = ").
WIKITEXT_DOCUMENT_START = r" = [^=](.*[^=])? = "


def compile_pattern(pattern: str) -> re.Pattern | None:
    """The compiled --document_start pattern, or None for "" (no boundaries)."""
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise DataError(
            f"--document_start={pattern!r} is not a valid regular expression: {e}"
        ) from None


def first_lines(lines: Sequence[str], pattern: str, isolated: bool = True) -> np.ndarray:
    """Indices of the lines that start a document, ascending."""
    regex = compile_pattern(pattern)
    if regex is None:
        return np.zeros(0, np.int64)

    def blank(k):
        return not 0 <= k < len(lines) or not lines[k].strip()

    return np.array(
        [
            k
            for k, line in enumerate(lines)
            if regex.fullmatch(line) and (not isolated or (blank(k - 1) and blank(k + 1)))
        ],
        np.int64,
    )


def document_starts(line_lengths: np.ndarray, starting_lines: np.ndarray) -> np.ndarray:
    """Marks, per token of the id stream, where a document starts (see the module docstring).

    Args:
        line_lengths: `(L,)` ids per line, its end-of-line id included.
        starting_lines: indices of the lines that start a document.

    Returns:
        `(N,)` bool, N = line_lengths.sum().
    """
    line_ends = np.cumsum(line_lengths)  # index after each line's end-of-line id
    marks = np.zeros(int(line_ends[-1]) if len(line_ends) else 0, bool)
    previous_eol = np.where(starting_lines > 0, line_ends[starting_lines - 1] - 1, 0)
    marks[previous_eol] = True
    return marks
