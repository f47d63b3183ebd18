"""Document boundaries: which lines start a document, and the marks on the id stream."""

import numpy as np
import pytest

from par_xl.data import DataError
from par_xl.data.documents import WIKITEXT_DOCUMENT_START, document_starts, first_lines

LINES = [
    " ",
    " = First Article = ",
    " ",
    " text , with = signs = in it ",
    " = Played , W = ",  # a table row: not alone between blank lines
    " ",
    " = = Section = = ",  # second-level heading
    " ",
    " = Second Article = ",
    "",
    " more text ",
]


def test_first_lines_of_wikitext_headings():
    assert first_lines(LINES, WIKITEXT_DOCUMENT_START).tolist() == [1, 8]
    # Without the blank-line rule, the table row counts too.
    assert first_lines(LINES, WIKITEXT_DOCUMENT_START, isolated=False).tolist() == [1, 4, 8]
    assert first_lines(LINES, "").tolist() == []  # no boundaries
    assert first_lines([" = Title = ", " x "], WIKITEXT_DOCUMENT_START).tolist() == []
    assert first_lines([" = Title = "], WIKITEXT_DOCUMENT_START).tolist() == [0]


def test_bad_pattern_names_the_flag():
    with pytest.raises(DataError, match=r"--document_start='\(' is not a valid regular"):
        first_lines(LINES, "(")


def test_marks_sit_on_the_end_of_line_before_a_document():
    lengths = np.array([1, 3, 1, 4])  # ids per line, end-of-line included
    # Stream: line 0 = [0], line 1 = [1, 2, 3], line 2 = [4], line 3 = [5, 6, 7, 8].
    marks = document_starts(lengths, np.array([0, 3]))
    assert marks.shape == (9,)
    assert np.flatnonzero(marks).tolist() == [0, 4]  # file start; line 2's end of line
    assert not document_starts(lengths, np.zeros(0, np.int64)).any()
