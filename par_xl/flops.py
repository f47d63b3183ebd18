"""Matrix-multiply FLOPs of a PARTransformerXL training step, per token.

Counts what the implementation computes (hardware FLOPs): every branch of a supernet block,
the masked half of the attention scores, the memory positions' key/value projections, the
dense per-cluster adaptive-softmax logits. Element-wise work (norms, softmax, dropout) is
left out, as usual for model-FLOPs utilization. Training costs 3x the forward pass (the
backward pass computes two products per forward product).
"""

from par_xl.cutoffs import tail_width


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
    macs = 0.0
    for block in model.blocks:
        if block.choice in (None, "A"):
            macs += attention
        if block.choice in (None, "F"):
            macs += feed_forward
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
