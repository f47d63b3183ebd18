"""A model's size: its trainable parameters."""

import math


def count_parameters(model):
    """The trainable parameters of `model`. Not `count_params()`: that also counts the state a
    PARTransformerXL carries between segments in non-trainable variables (the XL memory, B x M x
    D per attention block, the kNN stores, LEAP's and the recurrent cell's states), which grows
    with the batch and the memory length."""
    return sum(math.prod(weight.shape) for weight in model.trainable_weights)
