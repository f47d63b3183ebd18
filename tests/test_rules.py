"""Fixed architectures from published rules (par_xl.models.rules), and train.py recording the
letters they expand to."""

import json

import pytest
from scripts import run_script

from par_xl.models.rules import expand_architecture, standard_architecture


def attention_blocks(letters):
    return [i for i, c in enumerate(letters) if c == "A"]


@pytest.mark.parametrize("layers,p", [(32, 5), (32, 3), (24, 5), (6, 5), (7, 3)])
def test_par_rule_spreads_round_l_over_p_attention_blocks_over_the_first_two_thirds(layers, p):
    letters = expand_architecture(f"par_rule:p={p}", layers)
    blocks = attention_blocks(letters)
    assert len(letters) == layers and set(letters) <= {"A", "F"}
    assert len(blocks) == max(1, round(layers / p))
    assert max(blocks) < round(2 * layers / 3)
    gaps = [b - a for a, b in zip(blocks, blocks[1:])]
    assert not gaps or max(gaps) - min(gaps) <= 1  # evenly spread
    late = attention_blocks(expand_architecture(f"late_rule:p={p}", layers))
    assert len(late) == len(blocks) and min(late) >= round(2 * layers / 3)


def test_par_rule_at_the_papers_depth():
    assert expand_architecture("par_rule:p=5", 32) == "FAFFFAFFAFFFAFFAFFFAFFFFFFFFFFFF"
    assert expand_architecture("late_rule:p=5", 32) == "F" * 21 + "AFAFAFAFAFA"[:11]


@pytest.mark.parametrize("k", [0, 1, 3, 16])
def test_sandwich_is_k_attention_then_pairs_then_k_feed_forward(k):
    letters = expand_architecture(f"sandwich:k={k}", 32)
    assert letters == "A" * k + "AF" * (16 - k) + "F" * k
    assert letters.count("A") == letters.count("F") == 16


def test_standard_and_plain_letters():
    assert expand_architecture("standard", 5) == standard_architecture(5) == "AFAFA"
    assert expand_architecture("AAFFI", 5) == "AAFFI"  # letters pass unchanged


@pytest.mark.parametrize(
    "spec,layers,message",
    [
        ("sandwich:k=3", 7, "needs an even --num_layers"),
        ("sandwich:k=5", 8, r"k must be in \[0, 4\]"),
        ("sandwich", 8, "expected sandwich:k=<integer>"),
        ("par_rule:q=5", 8, "expected par_rule:p=<integer>"),
        ("par_rule:p=x", 8, "expected par_rule:p=<integer>"),
        ("par_rule:p=0", 8, "p must be a positive integer"),
        ("late_rule:p=1", 8, "do not fit in blocks 5..7 of 8"),
        ("standard:k=1", 8, "takes no parameters"),
    ],
)
def test_bad_rules_name_what_they_need(spec, layers, message):
    with pytest.raises(ValueError, match=message):
        expand_architecture(spec, layers)


@pytest.mark.slow
def test_train_records_the_letters_a_rule_expands_to(tiny_data, tmp_path):
    args = [
        f"--train_directory={tiny_data}/tf/train", f"--valid_directory={tiny_data}/tf/valid",
        f"--sp_model_prefix={tiny_data}/sp", "--preset=tiny", "--num_layers=6", "--cutoffs=20",
        "--max_steps=2", f"--log_dir={tmp_path}", "--model_name=rule",
    ]  # fmt: skip
    result = run_script("train.py", *args, "--architecture=sandwich:k=1")
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "rule/checkpoints/config.json").read_text())
    assert config["model"]["architecture"] == "AAFAFF"
    bad = run_script("train.py", *args, "--architecture=sandwich:k=9", "--model_name=bad")
    assert bad.returncode == 2 and "--architecture='sandwich:k=9': k must be in [0, 3]" in (
        bad.stderr
    )
