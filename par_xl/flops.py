"""Matrix-multiply FLOPs of a PARTransformerXL training step, per token.

Counts what the implementation computes (hardware FLOPs): every branch of an all-branches
supernet block, the expected branch of a single-path one (under the current choice
probabilities, so the figure follows the search),
the masked half of the attention scores, the memory positions' key/value projections, the
dense per-cluster adaptive-softmax logits. Element-wise work (norms, softmax, dropout) is
left out, as usual for model-FLOPs utilization. Training costs 3x the forward pass (the
backward pass computes two products per forward product).
"""

from par_xl.cutoffs import tail_width
from par_xl.layers.stochastic_block import CHOICES


def forward_flops_per_token(model, segment_length, batch_size):
    """Forward-pass FLOPs (2 per multiply-add) per input token, for `(B, T)` batches."""
    d, m, t = model.d_model, model.mem_len, segment_length
    k = m + t  # keys per query
    attention = (
        d * d  # query projection
        + 2 * d * d * k / t  # key and value projections over [memory; segment]
        + k * d * d / (batch_size * t)  # position projection, shared by the batch
        + 3 * k * d  # content scores, position scores, probabilities x values
        + d * d  # output projection
    )
    feed_forward = 2 * d * model.d_ffn
    branch_macs = {"A": attention, "F": feed_forward, "I": 0.0}
    probabilities = model.choice_probabilities()[0]
    macs = 0.0
    for block, row in zip(model.blocks, probabilities):
        if block.choice is None and model.search == "all_branches":
            macs += attention + feed_forward
        else:  # a fixed block's row is one-hot
            macs += sum(float(p) * branch_macs[c] for p, c in zip(row, CHOICES))
    softmax = model.output_layer
    bounds = softmax.bounds
    macs += d * (bounds[1] + softmax.num_tails)  # head
    positions = batch_size * segment_length
    for i in range(1, softmax.num_tails + 1):
        reduced = tail_width(d, softmax.proj_factor, i)
        scored = softmax.tail_slice_rows(i, positions) / positions  # share the tail scores
        macs += scored * (d * reduced + reduced * (bounds[i + 1] - bounds[i]))
    return 2.0 * macs


def training_flops_per_token(model, segment_length, batch_size):
    """Forward plus backward pass FLOPs per token (3x the forward pass)."""
    return 3.0 * forward_flops_per_token(model, segment_length, batch_size)
