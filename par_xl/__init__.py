"""par-xl: Pay Attention when Required Transformer-XL in Keras 3."""

__version__ = "0.1.0"
