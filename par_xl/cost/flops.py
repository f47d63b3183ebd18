"""Matrix-multiply FLOPs of a PARTransformerXL per token: training step, evaluation, generation.

Counts what the implementation computes (hardware FLOPs): in training, every branch of an
all-branches supernet block, the expected branch of a single-path one (under the current choice
probabilities, so the figure follows the search); at inference, every branch with
`choice_at_inference="expected"`, the preferred one with "argmax"; the masked half of the
attention scores, the memory positions' key/value projections, the dense per-cluster
adaptive-softmax logits. Element-wise work (norms, softmax, dropout, the sampler's filtering)
is left out, as usual for model-FLOPs utilization. Training costs 3x the
forward pass (the backward pass computes two products per forward product); evaluation is
the forward pass and its loss.
"""

import numpy as np

from par_xl.cutoffs import tail_width
from par_xl.layers.choices import CHOICES


def forward_flops_per_token(
    model,
    segment_length,
    batch_size,
    mem_len=None,
    all_tails=False,
    position_projection=True,
    training=True,
):
    """Forward-pass FLOPs (2 per multiply-add) per input token, for `(B, T)` batches.

    Args:
        model: a `PARTransformerXL`.
        segment_length, batch_size: T and B.
        mem_len: M memory positions (default: the model's).
        training: the training pass (a supernet block computes what its `search` does), else
            inference: every branch with `choice_at_inference="expected"`, only the preferred
            one with `"argmax"`.
        all_tails: score every tail cluster for every position (`log_probs`, as generation
            does) instead of the loss's capacity of positions.
        position_projection: count the projection of the K relative positions (shared by the
            batch); a loop whose K never changes computes it once (XLA hoists it).
    """
    m = model.mem_len if mem_len is None else mem_len
    probabilities = model.choice_probabilities()[0]  # (L, C) over model.choice_letters
    macs = 0.0
    if training:
        one_branch = model.search == "single_path"
    else:
        one_branch = model.choice_at_inference == "argmax"
        probabilities = np.eye(probabilities.shape[1])[probabilities.argmax(axis=1)]  # preferred
    shape = (segment_length, m, batch_size, position_projection)
    for block, row in zip(model.blocks, probabilities):
        branch = {c: CHOICES[c].macs_per_token(block, *shape) for c in block.offered}
        if block.choice is None and not one_branch:  # every branch computed
            macs += sum(branch.values())
        else:  # the expected branch (0 for letters not offered); a fixed block's row is one-hot
            macs += sum(float(p) * branch[c] for p, c in zip(row, model.choice_letters) if p)
    return 2.0 * macs + output_flops_per_token(model, segment_length, batch_size, all_tails)


def output_flops_per_token(model, segment_length, batch_size, all_tails=False):
    """Forward FLOPs per token of the output layer (the adaptive softmax's head and the tails
    it scores), what every architecture of the model pays besides its blocks."""
    d, softmax = model.d_model, model.output_layer
    bounds = softmax.bounds
    macs = d * (bounds[1] + softmax.num_tails)  # head
    positions = batch_size * segment_length
    for i in range(1, softmax.num_tails + 1):
        reduced = tail_width(d, softmax.proj_factor, i)
        scored = 1.0 if all_tails else softmax.tail_slice_rows(i, positions) / positions
        macs += scored * (d * reduced + reduced * (bounds[i + 1] - bounds[i]))
    return 2.0 * macs


def training_flops_per_token(model, segment_length, batch_size):
    """Forward plus backward pass FLOPs per token (3x the forward pass)."""
    return 3.0 * forward_flops_per_token(model, segment_length, batch_size)


def evaluation_flops_per_token(model, segment_length, batch_size):
    """FLOPs per token of an evaluation batch: the inference forward pass and its loss."""
    return forward_flops_per_token(model, segment_length, batch_size, training=False)


def generation_flops_per_token(model, mem_len=None):
    """FLOPs per sampled token (`par_xl.models.generation.sample`): one position over M memory
    positions (default: the model's), the full distribution, in a loop that computes the
    position projection once (any batch size: nothing else is shared)."""
    return forward_flops_per_token(
        model, 1, 1, mem_len, all_tails=True, position_projection=False, training=False
    )
