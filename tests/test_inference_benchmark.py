"""benchmarks/inference.py: it times any derived architecture beside a reference, letters the
preset's supernet does not offer included."""

import json

from scripts import run_script


def test_derived_models_may_use_letters_beyond_the_presets_choices():
    out = run_script("benchmarks/inference.py", "--preset=tiny", "--models=AFG,AFA",
                     "--reference=AFA", "--shapes=8x8", "--parts=evaluation", "--repeats=1",
                     "--eval_batch_size=2", "--eval_tokens=64")  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    shape = json.loads(out.stdout[out.stdout.index("{"):])["T8_M8"]
    assert set(shape["evaluation"]) == {"AFG", "AFA"}
    assert list(shape["evaluation_speedup_over_AFA"]) == ["AFG"]
    assert shape["parameters"]["AFG"] != shape["parameters"]["AFA"]  # G's gate, not A's weights
