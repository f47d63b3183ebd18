"""The registry of block choices: every entry consistent, models over other letter sets,
per-block letters, and the weight layout old checkpoints need."""

import re

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from matplotlib.colors import is_color_like

from par_xl.configs import ConfigError, ModelConfig
from par_xl.cost.flops import evaluation_flops_per_token
from par_xl.layers.choices import (
    CHOICES,
    DEFAULT_CHOICES,
    in_registry_order,
    validate_architecture,
    validate_choices,
)
from par_xl.models import PARTransformerXL

D, D_FFN, T, M, B = 16, 24, 5, 3, 2
C, K = 6, 2  # the kNN store's slots and neighbours
TINY = dict(vocab_size=40, d_model=D, num_heads=2, d_ffn=D_FFN, mem_len=M, cutoffs=[10],
            dropout_rate=0.0, knn_memory_size=C, knn_neighbors=K)  # fmt: skip
ATTENTION_MACS = D * D * (1 + 2 * (M + T) / T + 1) + 3 * (M + T) * D + (M + T) * D * D / (B * T)
GATED_INNER = 16  # round(D_FFN (2 D + 1) / (3 D + 2)) = round(15.84): F's parameter count

# Multiply-adds per token of each letter's branch over (B, T) batches and M memory positions,
# with the position projection, counted by hand. A new registry entry needs its line here.
EXPECTED_MACS = {
    "A": ATTENTION_MACS,
    "F": 2 * D * D_FFN,
    "I": 0.0,
    # A's, plus per head (N * H = D per token) a score per store slot and 2 per neighbour.
    "M": ATTENTION_MACS + (C + 2 * K) * D,
    # The window W = T (the default) reaches all M memory slots: A's projections, content
    # scores and values over M + T keys; no position scores or projection (T5's is a lookup).
    "W": D * D * (1 + 2 * (M + T) / T + 1) + 2 * (M + T) * D,
    # Query, focus, key, value and output projections; five products over H per head.
    "L": 5 * D * D + 5 * D,
    "G": 3 * D * GATED_INNER,  # SwiGLU (the default): gate, up, down
    # A's; the tokens' query and output over the state (2 D^2) and S scores and values per
    # head (2 S D); per segment one update of the S = 16 states (W = 16 > T: one block of T):
    # 4 projections, attention over themselves and the T tokens, the fixed gate's 2D -> D.
    "R": ATTENTION_MACS + 2 * D * D + 2 * 16 * D
    + (4 * 16 * D * D + 2 * 16 * 16 * D + 2 * 16 * T * D + 16 * 2 * D * D) / T,
}
# The sublayers each letter's block holds (and `derive()` copies), by attribute name.
EXPECTED_SUBLAYERS = {
    "A": ["attention", "attention_norm"],
    "F": ["feed_forward", "feed_forward_norm"],
    "I": [],
    "M": ["memorizing_attention", "memorizing_attention_norm"],
    "W": ["window_attention", "window_attention_norm"],
    "L": ["leap_attention", "leap_attention_norm"],
    "G": ["gated_feed_forward", "gated_feed_forward_norm"],
    "R": ["block_recurrent_attention", "block_recurrent_attention_norm"],
}


def numpy(x):
    return ops.convert_to_numpy(x)


def tokens(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 40, size=shape).astype("int32")


def make_model(num_layers=3, **overrides):
    keras.utils.set_random_seed(0)
    model = PARTransformerXL(**TINY, num_layers=num_layers, **overrides)
    model.build((B, T))
    return model


def sublayer_names(block):
    """The block's sublayers but its residual dropout and its choice, in build order."""
    others = (block.residual_dropout, getattr(block, "gumbel", None))
    return [layer.name for layer in block._layers if not any(layer is o for o in others)]


def test_default_is_what_par_searches():
    # Each new letter after the others: the old weights and choice columns keep their places.
    assert DEFAULT_CHOICES == "AFI" and list(CHOICES) == ["A", "F", "I", "M", "W", "L", "G", "R"]
    assert [c.letter for c in CHOICES.values() if c.remembers] == ["M"]  # one store per block
    assert [c.letter for c in CHOICES.values() if c.recurrent_state] == ["L", "R"]  # states too
    assert in_registry_order("IFA") == "AFI" and in_registry_order("IA") == "AI"


@pytest.mark.parametrize("letter", list(CHOICES))
def test_every_entry_is_consistent(letter):
    choice = CHOICES[letter]
    assert choice.letter == letter and len(letter) == 1 and letter.isupper()
    assert choice.name and is_color_like(choice.color)
    assert letter in EXPECTED_MACS, f"write the expected multiply-adds of {letter} in this test"
    fixed = make_model(architecture=letter * 3)
    block = fixed.blocks[0]
    # Its sublayers, by the names derive() copies, and nothing else.
    assert list(choice.sublayers) == EXPECTED_SUBLAYERS[letter] == sublayer_names(block)
    # Attending means keeping XL memory; remembering, a kNN store.
    assert block.uses_attention is choice.attends
    assert fixed.memory_blocks == ([0, 1, 2] if choice.attends else [])
    assert block.remembers is choice.remembers
    assert fixed.knn_blocks == ([0, 1, 2] if choice.remembers else [])
    assert block.recurs is (choice.recurrent_state is not None)
    assert fixed.recurrent_blocks == ([0, 1, 2] if block.recurs else [])
    # Its cost: the registry's, counted by hand, and what par_xl.cost.flops adds per block.
    cost = choice.macs_per_token(block, T, M, B, True)
    np.testing.assert_allclose(cost, EXPECTED_MACS[letter], rtol=1e-12)
    identity = make_model(architecture="III")
    extra = evaluation_flops_per_token(fixed, T, B) - evaluation_flops_per_token(identity, T, B)
    np.testing.assert_allclose(extra, 3 * 2 * EXPECTED_MACS[letter], rtol=1e-12)
    # Its branch runs: the fixed model computes.
    hidden = numpy(fixed(tokens((B, T))))
    assert hidden.shape == (B, T, D) and np.all(np.isfinite(hidden))


@pytest.mark.parametrize("letter", list(CHOICES))
def test_derive_keeps_exactly_the_chosen_sublayers_with_their_weights(letter):
    # Every letter, but one with a recurrent state per block: this one's, else L's.
    recurrent = letter if CHOICES[letter].recurrent_state else "L"
    everything = "".join(c for c in CHOICES if not CHOICES[c].recurrent_state or c == recurrent)
    supernet = make_model(choices=everything, choice_at_inference="argmax")
    for block in supernet.blocks:
        block.gumbel.logits.assign(np.where(np.array(list(everything)) == letter, 5.0, -5.0))
    derived = supernet.derive()
    assert derived.architecture == letter * 3
    for source, target in zip(supernet.blocks, derived.blocks):
        assert sublayer_names(target) == EXPECTED_SUBLAYERS[letter]
        for name in EXPECTED_SUBLAYERS[letter]:
            for a, b in zip(getattr(source, name).weights, getattr(target, name).weights):
                np.testing.assert_array_equal(numpy(a), numpy(b))
    for seed in (1, 2):  # memory carried in both
        x = tokens((B, T), seed)
        np.testing.assert_allclose(numpy(derived(x)), numpy(supernet(x)), rtol=1e-5, atol=1e-6)


def test_copy_weights_from_takes_each_blocks_sublayers_or_names_the_missing_one():
    """An "AFA" model takes a trained-looking supernet's weights for its letters' sublayers,
    embedding and output; from "FFF" it gets no attention for block_0: the error says so."""
    source, target = make_model(), make_model(architecture="AFA")
    rng = np.random.default_rng(0)
    for weight in source.weights:
        weight.assign(numpy(weight) + rng.normal(0.0, 0.1, weight.shape).astype("float32"))
    target.copy_weights_from(source)
    pairs = [(source.embedding, target.embedding), (source.output_layer, target.output_layer)]
    for a, b, letter in zip(source.blocks, target.blocks, "AFA"):
        pairs += [(getattr(a, name), getattr(b, name)) for name in EXPECTED_SUBLAYERS[letter]]
    for a, b in pairs:
        assert a.weights and len(a.weights) == len(b.weights)
        for x, y in zip(a.weights, b.weights):
            np.testing.assert_array_equal(numpy(x), numpy(y))
    with pytest.raises(ValueError, match=r"block_0 of the source offers 'F', so it has no "
                                         r"attention for this model's 'A'"):  # fmt: skip
        target.copy_weights_from(make_model(architecture="FFF"))


def test_a_model_over_two_letters_trains_derives_and_round_trips(tmp_path):
    model = make_model(choices="AF")
    assert [block.gumbel.num_choices for block in model.blocks] == [2, 2, 2]
    assert model.choice_letters == "AF"
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x, y = tokens((3, B, T), 3), tokens((3, B, T), 4)
    history = model.fit(tf.data.Dataset.from_tensor_slices((x, y)), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    probabilities, architecture = model.choice_probabilities()
    logits = np.stack([numpy(block.gumbel.logits) for block in model.blocks])  # (3, 2)
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-6)
    assert set(architecture) <= set("AF")
    derived = model.derive()
    assert derived.choices == "AF" and derived.choice_letters == "AF"
    np.testing.assert_array_equal(derived.choice_probabilities()[0], np.eye(2)[
        ["AF".index(c) for c in architecture]])  # fmt: skip
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.choices == "AF" and loaded.get_config() == model.get_config()
    # The letters' order is the choice logits' order; the sublayers keep the registry's.
    reversed_order = make_model(choices="FA")
    assert reversed_order.choice_letters == "AF" and reversed_order.blocks[0].choices == "FA"
    assert sublayer_names(reversed_order.blocks[0]) == sublayer_names(model.blocks[0])


def test_per_block_letters_give_zero_columns():
    """Blocks may offer different letters (issue 11 gives some blocks a kNN choice): the
    probabilities cover the union in registry order, 0 where a block does not offer a letter."""
    keras.utils.set_random_seed(0)
    model = PARTransformerXL(**TINY, num_layers=3, choices="AF")
    model.blocks[1].choices = "FI"  # before build: the block's own candidates
    model.build((B, T))
    assert model.choice_letters == "AFI"
    assert model.memory_blocks == [0, 2]  # block 1 cannot attend: no memory
    model.blocks[1].gumbel.logits.assign([0.0, 3.0])  # prefers I
    probabilities, architecture = model.choice_probabilities()
    assert probabilities.shape == (3, 3)
    half = np.full(2, 0.5, "float32")
    np.testing.assert_allclose(probabilities[[0, 2]][:, :2], [half, half])
    np.testing.assert_array_equal(probabilities[[0, 2], 2], [0.0, 0.0])  # no I in blocks 0, 2
    assert probabilities[1, 0] == 0.0  # no A in block 1
    np.testing.assert_allclose(probabilities[1, 1:], np.exp([0, 3]) / np.exp([0, 3]).sum(),
                               rtol=1e-6)  # fmt: skip
    assert architecture[1] == "I"
    with pytest.raises(ValueError, match=r"architecture='AAA': block_1 offers 'FI', not 'A'"):
        model.derive("AAA")
    hidden = numpy(model(tokens((B, T))))  # every block computes its own letters
    assert np.all(np.isfinite(hidden))


@pytest.mark.parametrize(
    "choices,accepted",
    [("AFI", True), ("AF", True), ("IA", True), ("A", False), ("AA", False), ("AX", False),
     ("", False)],
)  # fmt: skip
def test_choices_are_validated(choices, accepted):
    if accepted:
        assert validate_choices(choices) == choices
        ModelConfig(choices=choices).validate()
        return
    message = "2 or more distinct letters of A (attention), F (feed-forward), I (identity)"
    with pytest.raises(ValueError, match=rf"^choices must be {re.escape(message)}"):
        validate_choices(choices)
    with pytest.raises(ConfigError, match=rf"^--choices must be .*received {choices!r}"):
        ModelConfig(choices=choices).validate()
    with pytest.raises(ValueError, match="choices must be"):
        PARTransformerXL(**TINY, choices=choices)


def test_an_architecture_uses_registry_letters():
    assert validate_architecture("AFIA", 4) == "AFIA"
    with pytest.raises(ValueError, match=r"architecture must be 4 letters \(one per layer\) of A"):
        validate_architecture("AFXA", 4)
    with pytest.raises(ConfigError, match="--architecture must be 6 letters"):
        ModelConfig(architecture="AAXAFF").validate()
    # A fixed architecture need not keep to --choices: they say what a search chooses among.
    ModelConfig(architecture="AAIAFF", choices="AF").validate()


# What checkpoints written before the registry hold, the weights in this order and these
# places of the .weights.h5 file (Keras saves by attribute and class names): unchanged, so
# that they load. Read from the code before the change.
ATTENTION = ("query_kernel", "key_kernel", "value_kernel", "position_kernel", "content_bias",
             "position_bias", "output_kernel")  # fmt: skip
NORM = ("gamma", "beta")


def attention_paths(block):
    return [f"{block}/attention/{n}" for n in ATTENTION] + [
        f"{block}/attention_norm/{n}" for n in NORM
    ]


def feed_forward_paths(block):
    dense = [
        f"{block}/feed_forward/{d}/{n}" for d in ("inner", "outer") for n in ("kernel", "bias")
    ]
    return dense + [f"{block}/feed_forward_norm/{n}" for n in NORM]


def places(block, sublayer, count):
    return [f"blocks/{block}/{sublayer}/vars/{i}" for i in range(count)]


OUTER_PATHS = [  # after the model's own variables: the adaptive softmax, the embedding
    *(f"adaptive_softmax/{n}" for n in ("head_embedding", "cluster_kernel", "head_bias")),
    *(f"adaptive_softmax/tail_{n}_1" for n in ("embedding", "projection", "bias")),
    "embedding/embeddings",
]
OUTER_PLACES = [  # after the blocks: the embedding, the adaptive softmax, the model's own
    "embedding/vars/0",
    *(f"layers/adaptive_softmax/vars/{i}" for i in range(6)),
    "vars/0",  # memory_<i>
    "vars/1",  # valid_memory_length
]
FEED_FORWARD_PLACES = ("feed_forward/inner", 2), ("feed_forward/outer", 2), ("feed_forward_norm", 2)
LAYOUT = {
    "supernet": (  # one block: memory_0, valid_memory_length, then the layers
        dict(num_layers=1),
        ["memory_0", "valid_memory_length", *OUTER_PATHS, *attention_paths("block_0"),
         *feed_forward_paths("block_0"), "block_0/gumbel/logits", "block_0/gumbel/tau"],
        [place for sublayer in (("attention", 7), ("attention_norm", 2), *FEED_FORWARD_PLACES,
                                ("gumbel", 2))
         for place in places("stochastic_block", *sublayer)] + OUTER_PLACES,
    ),
    "fixed FIA": (  # only block 2 attends: memory_2
        dict(num_layers=3, architecture="FIA"),
        ["memory_2", "valid_memory_length", *OUTER_PATHS, *feed_forward_paths("block_0"),
         *attention_paths("block_2")],
        [place for sublayer in FEED_FORWARD_PLACES
         for place in places("stochastic_block", *sublayer)]
        + places("stochastic_block_2", "attention", 7)
        + places("stochastic_block_2", "attention_norm", 2)
        + OUTER_PLACES,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(LAYOUT))
def test_the_weight_layout_old_checkpoints_hold_is_kept(name, tmp_path):
    kwargs, paths, places = LAYOUT[name]
    keras.utils.set_random_seed(0)
    model = PARTransformerXL(vocab_size=30, d_model=8, num_heads=2, d_ffn=16, mem_len=3,
                             cutoffs=[10], **kwargs)  # fmt: skip
    model.build((2, 4))
    assert [v.path.split("/", 1)[1] for v in model.weights] == paths
    model.save_weights(tmp_path / "model.weights.h5")
    saved = []
    with h5py.File(tmp_path / "model.weights.h5") as file:
        file.visititems(
            lambda key, value: saved.append(key) if isinstance(value, h5py.Dataset) else None
        )
    assert saved == places
