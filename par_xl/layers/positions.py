"""Position information for attention: rotary embeddings and T5's bucketed relative bias.

Two alternatives to Transformer-XL's sinusoid-and-projection scores
(`par_xl.layers.relative_attention`), both functions of the offset between a query and a key
only, so that a segment scored over `[memory; segment]` gets the same scores wherever the stream
is (what the XL memory needs):

- rotary (Su et al. 2021, arXiv 2104.09864): query and key vectors are rotated by an angle
  proportional to their position, in H/2 planes of frequencies `10000^(-2k/H)`; the product of a
  query rotated by p and a key rotated by p' depends on p - p' only.
- T5 (Raffel et al. 2020, arXiv 1910.10683): a learned scalar per head and distance bucket is
  added to the scores; distances below `num_buckets // 2` have a bucket each, longer ones share
  log-spaced buckets up to `max_distance`, beyond which all fall in the last bucket. Causal
  (unidirectional): a query only sees keys at distances >= 0.

Shape letters as in `par_xl.layers.relative_attention` (B, T, K, N, H).
"""

import math

from keras import ops

# The --position values of attention (A) and memorizing attention (M): Transformer-XL's own,
# rotary, T5's bias.
POSITIONS = ("xl", "rotary", "t5")
T5_BUCKETS = 32  # T5's and meliad's defaults
T5_MAX_DISTANCE = 128


def validate_position(position, head_size=None):
    """Checks that `position` is one of POSITIONS (rotary needs an even head size H); returns
    it."""
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, received {position!r}.")
    if position == "rotary" and head_size is not None and head_size % 2:
        raise ValueError(
            f"position='rotary' needs an even head size (it rotates pairs of dimensions), "
            f"received head_size={head_size}."
        )
    return position


def relative_position_buckets(distance, num_buckets=T5_BUCKETS, max_distance=T5_MAX_DISTANCE):
    """T5's causal bucket of each distance `query - key` (negative ones count as 0).

    Distances below `exact = num_buckets // 2` are their own bucket; a distance d >= exact is
    in bucket `exact + floor(log(d / exact) / log(max_distance / exact) * (num_buckets -
    exact))`, at most `num_buckets - 1`.

    Args:
        distance: int tensor of any shape.

    Returns:
        int32 buckets in `[0, num_buckets)`, the shape of `distance`.
    """
    exact = num_buckets // 2
    distance = ops.maximum(ops.cast(distance, "int32"), 0)
    ratio = ops.cast(ops.maximum(distance, exact), "float32") / exact  # >= 1: no log(0)
    scale = (num_buckets - exact) / math.log(max_distance / exact)
    large = exact + ops.cast(ops.log(ratio) * scale, "int32")  # truncation: floor for >= 0
    large = ops.minimum(large, num_buckets - 1)
    return ops.where(distance < exact, distance, large)


def t5_bias(table, query_offset, query_length, key_length):
    """T5's bias of every (query, key) pair, per head.

    Query i stands at position `query_offset + i`, key j at position j, so the distance is
    `query_offset + i - j` (e.g. over `[memory; segment]`, `query_offset` is M).

    Args:
        table: `(num_buckets, N)` learned bias per bucket and head.
        query_offset: int, the first query's position.
        query_length, key_length: the number of queries and keys.

    Returns:
        `(N, queries, keys)` in the table's dtype.
    """
    query = ops.arange(query_length, dtype="int32")[:, None] + query_offset
    key = ops.arange(key_length, dtype="int32")[None, :]
    buckets = relative_position_buckets(query - key, num_buckets=table.shape[0])
    bias = ops.take(table, buckets, axis=0)  # (queries, keys, N)
    return ops.transpose(bias, (2, 0, 1))


def rotate(x, positions):
    """Rotary embedding: each of the H/2 pairs `(x[k], x[k + H/2])` of every vector rotated by
    `position * 10000^(-2k/H)`.

    Args:
        x: `(B, L, N, H)` queries or keys, H even.
        positions: `(L,)` the positions of the L vectors (any offset: only differences matter).

    Returns:
        `(B, L, N, H)` in the dtype of `x` (angles computed in float32).
    """
    half = x.shape[-1] // 2
    frequencies = 1.0 / (10000.0 ** (ops.arange(half, dtype="float32") / half))  # (H/2,)
    angles = ops.cast(positions, "float32")[:, None] * frequencies[None, :]  # (L, H/2)
    cos = ops.cast(ops.cos(angles), x.dtype)[None, :, None, :]  # (1, L, 1, H/2)
    sin = ops.cast(ops.sin(angles), x.dtype)[None, :, None, :]
    first, second = x[..., :half], x[..., half:]
    return ops.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
