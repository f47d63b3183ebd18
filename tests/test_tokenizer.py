"""The trained SentencePiece model: `<unk>` as one id, byte fallback, frequency-ordered ids."""

import numpy as np
import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from par_xl.data import DataError
from par_xl.data.text_units import characters_per_id, word_count, words_per_id
from par_xl.data.tokenizer import (
    decode_lines,
    encode_lines,
    frequency_ordered,
    load_tokenizer,
    tokenizer_info,
    train_tokenizer,
)

UNSEEN = [
    "привет мир",  # Cyrillic
    "日本語のテキスト",  # CJK
    "emoji 😀🚀 and ∮ e⋅da = q",  # emoji and mathematics
    "ελληνικά ünïcödé",
]


def lines_of(text_dir, split="train"):
    return (text_dir / f"{split}.txt").read_text(encoding="utf-8").split("\n")[:-1]


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def trained(request, small_text_dir, tmp_path_factory):
    """`(sp, lines)`: a model of each type trained on the small corpus (its case kept)."""
    lines = lines_of(small_text_dir)
    prefix = tmp_path_factory.mktemp(request.param) / "sp"
    train_tokenizer(lines, prefix, vocab_size=400, model_type=request.param, lowercase=False)
    return load_tokenizer(f"{prefix}.model"), lines


def test_unk_marker_is_one_id_that_decodes_back(trained):
    sp, _ = trained
    for text in ["the <unk> of <unk>", "<unk> first", "glued x<unk> too"]:
        ids = sp.encode(text)
        assert sp.unk_id() not in ids
        assert sum(sp.id_to_piece(i).endswith("<unk>") for i in ids) == text.count("<unk>")
        assert sp.decode(ids) == text
    assert len(sp.encode("<unk>")) == 1
    assert tokenizer_info(sp).unk_marker == "<unk>"


def test_byte_fallback_round_trips_unseen_scripts_and_emoji(trained):
    sp, _ = trained
    for text in UNSEEN:
        ids = sp.encode(text)
        assert sp.unk_id() not in ids, text
        assert sp.decode(ids) == text
    assert tokenizer_info(sp).byte_fallback


def test_lowercase_model_round_trips_its_normal_form(small_text_dir, tmp_path):
    train_tokenizer(lines_of(small_text_dir), tmp_path / "sp", vocab_size=400, lowercase=True)
    sp = load_tokenizer(tmp_path / "sp.model")
    for text in UNSEEN:
        assert sp.decode(sp.encode(text.upper())) == text.lower()


def test_without_byte_fallback_unseen_characters_are_unknown(small_text_dir, tmp_path):
    lines = lines_of(small_text_dir)
    train_tokenizer(lines, tmp_path / "sp", vocab_size=200, byte_fallback=False, unk_marker="")
    sp = load_tokenizer(tmp_path / "sp.model")
    assert sp.unk_id() in sp.encode(UNSEEN[0])
    info = tokenizer_info(sp)
    assert not info.byte_fallback and info.unk_marker == ""
    assert len(sp.encode("<unk>")) > 1  # no marker: the characters of the text


def test_ids_follow_training_frequency(trained):
    sp, lines = trained
    counts = np.bincount(encode_lines(sp, lines).ids, minlength=sp.get_piece_size())
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unknown>", "<s>", "</s>"]
    assert np.all(np.diff(counts[3:]) <= 0)  # every other piece by decreasing count


def test_frequency_order_changes_ids_not_segmentation(trained, tmp_path):
    """Reordering the pieces of a model splits every text exactly as before, with new ids."""
    sp, lines = trained
    proto = sentencepiece_model_pb2.ModelProto.FromString(sp.serialized_model_proto())
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 1000, size=sp.get_piece_size())
    reordered = spm.SentencePieceProcessor(
        model_proto=frequency_ordered(proto, counts).SerializeToString()
    )
    texts = lines[:300] + UNSEEN + ["the <unk> x<unk>"]
    for text in texts:
        assert sp.encode(text, out_type=str) == reordered.encode(text, out_type=str)
    order = [reordered.piece_to_id(sp.id_to_piece(i)) for i in range(3, sp.get_piece_size())]
    moved = counts[3:][np.argsort(order)]  # counts in the new id order
    assert np.all(np.diff(moved) <= 0)


def test_decode_lines_splits_on_end_of_line(trained):
    sp, _ = trained
    text = "first <unk> line\n\nthird 😀"
    ids = encode_lines(sp, text.split("\n")).ids
    assert decode_lines(sp, ids) == text + "\n"  # the stream ends with an end-of-line id


def test_words_and_characters_per_id(trained):
    sp, lines = trained
    encoded = encode_lines(sp, lines + UNSEEN)
    words, characters = words_per_id(sp), characters_per_id(sp)
    assert words[encoded.ids].sum() == word_count(lines + UNSEEN)
    stops = np.cumsum(encoded.line_lengths)
    for line, start, stop in zip(lines[:200] + UNSEEN, stops - encoded.line_lengths, stops):
        line_ids = encoded.ids[start:stop]
        decoded = sp.decode(line_ids[:-1].tolist())
        # The decoded line, its leading space (SentencePiece's dummy prefix) and its end of line.
        assert characters[line_ids].sum() == len(decoded) + (len(decoded) > 0) + 1, line


def test_vocabulary_too_small_names_byte_fallback(small_text_dir, tmp_path):
    with pytest.raises(DataError, match="at least \\d+ \\(256 byte pieces of --byte_fallback"):
        train_tokenizer(lines_of(small_text_dir), tmp_path / "sp", vocab_size=200)
