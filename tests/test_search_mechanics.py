"""The search-mechanics comparison (benchmarks/search_mechanics.py): its series, and the
derived architectures' costs as multiples of the whole standard model's."""

import pytest

from benchmarks.search_mechanics import relative_costs, series


def test_the_series_gives_every_search_and_its_fine_tune_equal_steps_to_the_standard():
    order = [run.name for run in series("table.json")]
    runs = {run.name: run for run in series("table.json")}
    assert order[:9] == ["s_sp_cost", "std_AFAFAF", "ft_s_sp_cost", "bound_AFFFFF",
                         "bound_AGGGGG", "s_sp_cost_AF", "ft_s_sp_cost_AF", "s_sp_arch",
                         "s_ab_arch"]  # fmt: skip
    searches = [name for name in order if name.startswith("s_")]
    assert sorted(searches) == sorted(["s_sp_cost_AF"] + [
        f"s_{s}_{n}" for s in ("sp", "ab") for n in ("cost", "arch", "joint", "frac")])  # fmt: skip
    for name in searches:  # each search before its fine-tune
        assert order.index(name) < order.index(f"ft_{name}")
    assert len(order) == len(runs) == 2 * len(searches) + 6  # each fine-tuned; 6 fixed
    for name in searches:
        assert "--epochs=4" in runs[name].flags and "--epochs=4" in runs[f"ft_{name}"].flags
        assert runs[f"ft_{name}"].after == name and not runs[f"ft_{name}"].from_scratch
    for name, letters in (("std", "AFAFAF"), ("bound", "AFFFFF"), ("bound", "AGGGGG"),
                          ("bound", "LFLFLF"), ("bound", "ALFFFF"), ("bound", "FFAFFF")):
        # from scratch for a search plus its fine-tune
        assert runs[f"{name}_{letters}"].flags == (f"--architecture={letters}", "--epochs=8")
    cost = {"--cost=latency", "--latency_table=table.json", "--cost_form=hinge",
            "--cost_target=0.84", "--cost_weight=1.0"}  # one attention block's price
    for name in ("s_sp_cost", "s_sp_cost_AF", "s_ab_cost"):
        assert cost <= set(runs[name].flags)
    assert "--choices=AF" in runs["s_sp_cost_AF"].flags
    assert not any(flag.startswith("--cost") for flag in runs["s_sp_arch"].flags)


def test_relative_costs_are_whole_models_fixed_part_included():
    table = {"forward_ms": {"A": 3.0, "F": 1.0, "I": 0.0}, "fixed_ms": {"forward_ms": 4.0}}
    flops = ({"A": 10.0, "F": 6.0, "I": 0.0}, 16.0)
    costs = relative_costs("AAIFAI", table, flops)
    # latency (4 + 3 + 3 + 1 + 3) / (4 + 3 x 3 + 3 x 1); FLOPs (16 + 36) / (16 + 48)
    assert costs == {"latency_x_standard": pytest.approx(14 / 16, abs=1e-3),
                     "flops_x_standard": pytest.approx(52 / 64, abs=1e-3)}  # fmt: skip
    assert relative_costs("AFAFAF", table, None) == {"latency_x_standard": 1.0}
