"""benchmarks/long_documents.py (issue 31): a run evaluated per store size and backend, the
backends compared, a search's choice probabilities, and the tables."""

import json

import numpy as np
from conftest import write_tiny_run

from benchmarks.long_documents import evaluate_run, markdown
from par_xl.training.document_positions import split_report
from par_xl.training.runs import load_run


def test_a_memorizing_run_is_evaluated_per_store_size_and_backend(tiny_data, tmp_path):
    run = write_tiny_run(tiny_data, tmp_path / "m", "AMF")
    figures = evaluate_run("m", run, ["valid", "test"], ["exact", "scann"], [1024, 8], (0, 64),
                           False, None, ["test"])  # fmt: skip
    assert set(figures["splits"]["valid"]) == {"exact C=1024", "exact C=8"}
    test = figures["splits"]["test"]
    assert set(test) == {f"{b} C={c}" for b in ("exact", "scann", "scann_vs_exact")
                         for c in (1024, 8)}  # fmt: skip
    assert test["scann C=8"]["knn_backend"] == "scann" and test["exact C=8"]["knn_memory_size"] == 8
    # Each evaluation is the split's report with that store; the comparison is their ratios.
    expected = split_report(load_run(run, knn_memory_size=8)[0], tiny_data / "tf" / "test",
                            (0, 64))  # fmt: skip
    np.testing.assert_allclose(test["exact C=8"]["loss"], expected["loss"], rtol=1e-6)
    assert abs(test["exact C=8"]["loss"] - test["exact C=1024"]["loss"]) > 1e-4
    compared = test["scann_vs_exact C=8"]
    np.testing.assert_allclose(compared["perplexity_ratio"], 1.0, atol=1e-5)  # ScaNN below
    # its index size searches exactly (`par_xl/memory/README.md`)
    np.testing.assert_allclose(compared["speed_ratio"], test["scann C=8"]["tokens_per_second"]
                               / test["exact C=8"]["tokens_per_second"])  # fmt: skip
    tables = markdown({"splits": ["valid", "test"], "runs": [figures]})
    assert tables.count("| m | AMF | exact C=") == 4 and tables.count("| m | AMF | scann C=") == 2
    assert "| m | test | C=8 |" in tables
    # Gains over the first run's exact evaluation, in percent of its bits.
    plain = write_tiny_run(tiny_data, tmp_path / "a", "AAF")
    reference = evaluate_run("a", plain, ["test"], ["exact"], [1024], (0, 64), False, None, [])
    tables = markdown({"splits": ["test"], "runs": [reference, figures]})
    ours, theirs = test["exact C=8"], reference["splits"]["test"]["exact"]
    row = next(line for line in tables.splitlines() if line.startswith("| m | exact C=8 | "))
    overall = 1 - ours["bits_per_byte"] / theirs["bits_per_byte"]
    late = 1 - ours["by_position"][1]["bits_per_token"] / theirs["by_position"][1]["bits_per_token"]
    assert row.split(" | ")[2:5:2] == [f"{100 * overall:+.2f}%", f"{100 * late:+.2f}%"]
    # The gate of block 1's M: sigmoid of its bias, per head.
    bias = load_run(run)[0].blocks[1].memorizing_attention.gate_bias.numpy()
    np.testing.assert_allclose(figures["gates"]["block_1_M_retrieved_share"],
                               1 / (1 + np.exp(-bias)), atol=1e-4)  # fmt: skip


def test_a_search_reports_its_choice_probabilities_at_its_own_store_size(tiny_data, tmp_path):
    run = write_tiny_run(tiny_data, tmp_path / "s", None, choices="AFMR")
    figures = evaluate_run("s", run, ["valid"], ["exact"], [1024, 8], (0,), False, None, [])
    assert set(figures["splits"]["valid"]) == {"exact"}  # no other store size
    assert [set(row) for row in figures["choice_probabilities"]] == [set("AFMR")] * 3
    for row in figures["choice_probabilities"]:
        np.testing.assert_allclose(sum(row.values()), 1.0, atol=1e-3)
    assert len(figures["derived_architecture"]) == 3
    assert {"block_0_M_retrieved_share", "block_2_R_state_kept"} <= set(figures["gates"])


def test_an_interrupted_evaluation_resumes_from_its_partial_figures(tiny_data, tmp_path):
    run = write_tiny_run(tiny_data, tmp_path / "a", "AAF")
    partial = tmp_path / "partial.json"
    first = evaluate_run("a", run, ["valid", "test"], ["exact"], [], (0,), False, None, [],
                         partial)  # fmt: skip
    assert json.loads(partial.read_text())["splits"] == first["splits"]
    # As if stopped after valid (its figures marked): only test is evaluated again.
    kept = {"valid": {"exact": {**first["splits"]["valid"]["exact"], "loss": -1.0}}}
    partial.write_text(json.dumps({"splits": kept}))
    second = evaluate_run("a", run, ["valid", "test"], ["exact"], [], (0,), False, None, [],
                          partial)  # fmt: skip
    assert second["splits"]["valid"]["exact"]["loss"] == -1.0
    np.testing.assert_allclose(second["splits"]["test"]["exact"]["loss"],
                               first["splits"]["test"]["exact"]["loss"], rtol=1e-6)  # fmt: skip
    assert second["parameters"] == first["parameters"]
