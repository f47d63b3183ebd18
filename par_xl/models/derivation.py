"""From a supernet to a fixed architecture: `derive` it, or copy its weights into a model.

Both go by the choice registry (`par_xl.layers.choices`): what each letter builds is what it
keeps. `PARTransformerXL.derive` and `copy_weights_from` call these.
"""

from par_xl.layers.choices import CHOICES, validate_architecture


def derive(supernet, architecture=None):
    """The fixed-architecture model a built `supernet` prefers, with its trained weights.

    Each block keeps only its chosen sublayers (`par_xl.layers.choices`), with the
    supernet's weights for them (an M block: its attention, gate and retrieval scale); the
    embedding and adaptive softmax are copied too. The result trains and serializes like
    any `PARTransformerXL`; its state (XL memory, kNN stores) starts empty.

    Args:
        architecture: one letter per block, each one the block offers (default: the
            argmax of `choice_probabilities()`).
    """
    if not supernet.built:
        raise ValueError("derive() needs a built model: call it on a batch first.")
    architecture = architecture or supernet.choice_probabilities()[1]
    validate_architecture(architecture, supernet.num_layers)
    for block, letter in zip(supernet.blocks, architecture):
        if letter not in block.offered:
            raise ValueError(
                f"architecture={architecture!r}: {block.name} offers {block.offered!r}, "
                f"not {letter!r}."
            )
    knn_layers = [i for i, letter in enumerate(architecture) if letter == "M"]
    config = {**supernet.get_config(), "architecture": architecture, "knn_layers": knn_layers}
    derived = supernet.__class__.from_config(config)
    derived.build(supernet._batch_shape)
    copy_weights(supernet, derived)
    return derived


def copy_weights(source, model):
    """Sets a built `model`'s weights from a built `source` of the same shape (vocabulary,
    widths, heads, blocks, cutoffs): the embedding, the adaptive softmax, and in each block
    the sublayers of every letter it offers (`par_xl.layers.choices`). A supernet's choice
    logits and the state (XL memory, kNN stores) are left as they are. This is how a
    derived architecture starts from its supernet (`derive`, `train.py --init_from`).

    Raises:
        ValueError: a block of `source` lacks a sublayer `model` needs (it never offered
            that letter), or the shapes differ.
    """
    if len(source.blocks) != len(model.blocks):
        raise ValueError(
            f"the source has {len(source.blocks)} blocks, this model {len(model.blocks)}."
        )
    pairs = [(source.output_layer, model.output_layer)]
    if model.embedding is not None:
        pairs.append((source.embedding, model.embedding))
    for i, (block, target) in enumerate(zip(source.blocks, model.blocks)):
        for letter in target.offered:
            for name in CHOICES[letter].sublayers:
                if not hasattr(block, name):
                    raise ValueError(
                        f"block_{i} of the source offers {block.offered!r}, so it has no "
                        f"{name} for this model's {letter!r} ({CHOICES[letter].name})."
                    )
                pairs.append((getattr(block, name), getattr(target, name)))
    for layer, target in pairs:
        target.set_weights(layer.get_weights())
