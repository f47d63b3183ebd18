"""The weight initializer shared by all par-xl layers."""

import keras


def default_initializer(stddev=0.02):
    """Normal(0, 0.02), the Transformer-XL / BERT initializer for every projection."""
    return keras.initializers.RandomNormal(stddev=stddev)
