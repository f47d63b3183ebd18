"""Words and characters per token, for word-level perplexity and bits per character.

Per-token perplexity depends on the tokenizer; per word it does not, and WikiText results are
published per word: `exp(total NLL / words)`, with WikiText's count of words (whitespace-separated
words plus one end-of-line per line, empty lines included; WikiText-2 train 2,088,628).

Counted on the id stream, so that the count also holds for any part of it, such as the tokens a
split's batches use: a token starts a word when its piece starts with `▁` (SentencePiece marks the
space before a word that way, once per word) or when it is the end-of-line id. Characters are those
of the text as the tokenizer normalized it: a piece's characters with `▁` as the space, one per
end-of-line, one per UTF-8 lead byte of byte fallback (continuation bytes add none).
"""

import numpy as np
import sentencepiece as spm

from par_xl.data.tokenizer import WORD_BOUNDARY


def word_count(lines) -> int:
    """WikiText's count: whitespace-separated words plus one end-of-line per line."""
    return sum(len(line.split()) for line in lines) + len(lines)


def words_per_id(sp: spm.SentencePieceProcessor) -> np.ndarray:
    """`(V,)` int64: 1 where the id starts a word (see the module docstring), else 0."""
    return np.array(
        [
            int(i == sp.eos_id() or sp.id_to_piece(i).startswith(WORD_BOUNDARY))
            for i in range(sp.get_piece_size())
        ],
        np.int64,
    )


def bytes_per_id(sp: spm.SentencePieceProcessor) -> np.ndarray:
    """`(V,)` int64: UTF-8 bytes of the normalized text each id stands for: a piece's, `▁` as a
    space; one per end-of-line and per byte of byte fallback; none for control and unknown ids.
    Exact for a model without a dummy prefix (`keep_whitespace`: the bytes of the file); with
    one, each line's first word counts the space the model put before it."""
    counts = np.zeros(sp.get_piece_size(), np.int64)
    for i in range(sp.get_piece_size()):
        if i == sp.eos_id() or sp.is_byte(i):
            counts[i] = 1
        elif not (sp.is_control(i) or sp.is_unknown(i)):
            counts[i] = len(sp.id_to_piece(i).replace(WORD_BOUNDARY, " ").encode("utf-8"))
    return counts


def characters_per_id(sp: spm.SentencePieceProcessor) -> np.ndarray:
    """`(V,)` int64: characters of the normalized text each id stands for."""
    counts = np.zeros(sp.get_piece_size(), np.int64)
    for i in range(sp.get_piece_size()):
        if i == sp.eos_id():
            counts[i] = 1
        elif sp.is_byte(i):
            counts[i] = int(not 0x80 <= int(sp.id_to_piece(i)[1:-1], 16) < 0xC0)
        elif not (sp.is_control(i) or sp.is_unknown(i)):
            counts[i] = len(sp.id_to_piece(i))
    return counts
