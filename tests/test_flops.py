"""par_xl.cost.flops at inference: what a supernet, an argmax supernet and a derived model
compute."""

import keras
import numpy as np

from par_xl.cost.flops import evaluation_flops_per_token, generation_flops_per_token
from par_xl.models import PARTransformerXL

TINY = dict(vocab_size=40, d_model=16, num_heads=2, d_ffn=24, mem_len=3, cutoffs=[10, 25],
            proj_factor=2)  # fmt: skip


def test_generation_flops_count_one_position_over_the_memory_and_every_tail():
    model = PARTransformerXL(**TINY, num_layers=2, architecture="AF")
    attention = 16 * 16 * (1 + 2 * 4 + 1) + 3 * 4 * 16  # q, k and v over M + 1 keys, out; scores
    feed_forward = 2 * 16 * 24
    softmax = 16 * (10 + 2) + (16 * 8 + 8 * 15) + (16 * 4 + 4 * 15)  # head, two tails
    expected = 2 * (attention + feed_forward + softmax)
    assert generation_flops_per_token(model) == expected
    assert generation_flops_per_token(model, mem_len=7) > expected


def test_inference_flops_count_only_the_branches_computed():
    keras.utils.set_random_seed(0)
    supernet = PARTransformerXL(**TINY, num_layers=4)
    supernet.build((2, 5))
    for block, preferred in zip(supernet.blocks, "AFIA"):
        block.gumbel.logits.assign(np.where(np.arange(3) == "AFI".index(preferred), 2.0, 0.0))
    derived = supernet.derive()
    argmax = PARTransformerXL.from_config(
        {**supernet.get_config(), "choice_at_inference": "argmax"}
    )
    argmax.build((2, 5))
    argmax.set_weights(supernet.get_weights())
    assert derived.architecture == "AFIA"
    expected = evaluation_flops_per_token(supernet, 5, 2)
    assert evaluation_flops_per_token(argmax, 5, 2) == evaluation_flops_per_token(derived, 5, 2)
    assert evaluation_flops_per_token(derived, 5, 2) < expected
    every_branch = PARTransformerXL(**TINY, num_layers=4, architecture="AAAA")
    only_ffn = PARTransformerXL(**TINY, num_layers=4, architecture="FFFF")
    softmax = evaluation_flops_per_token(PARTransformerXL(**TINY, num_layers=4,
                                                          architecture="IIII"), 5, 2)  # fmt: skip
    branches = sum(evaluation_flops_per_token(m, 5, 2) - softmax for m in (every_branch, only_ffn))
    assert expected == softmax + branches
