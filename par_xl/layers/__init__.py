"""Keras layers of the PAR Transformer-XL, registered under the "par_xl" package."""

from par_xl.layers.adaptive_softmax import AdaptiveSoftmax
from par_xl.layers.feed_forward import FeedForward
from par_xl.layers.gated_feed_forward import GatedFeedForward
from par_xl.layers.gumbel_choice import GumbelChoice
from par_xl.layers.leap_attention import LeapAttention
from par_xl.layers.memorizing_attention import MemorizingAttention
from par_xl.layers.relative_attention import RelativeAttention
from par_xl.layers.stochastic_block import StochasticBlock
from par_xl.layers.window_attention import WindowAttention

__all__ = [
    "AdaptiveSoftmax",
    "FeedForward",
    "GatedFeedForward",
    "GumbelChoice",
    "LeapAttention",
    "MemorizingAttention",
    "RelativeAttention",
    "StochasticBlock",
    "WindowAttention",
]
