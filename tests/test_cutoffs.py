"""Optimal cutoffs: exact against brute force and the O(K N^2) programme; file reader; CLI."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scripts import run_script

from par_xl import cutoffs
from par_xl.cutoffs import BASE_CUTOFFS, CostModel, compare_cutoffs, optimal_cutoffs
from par_xl.data.unigram import read_unigram_file, write_unigram

REPO = cutoffs.__file__.rsplit("/par_xl/", 1)[0]


def reference_width(m, i):
    """d_i of tail i as docs/cutoffs.md defines it, written out (not the library's)."""
    return max(1, m.d_model // m.proj_factor**i)


def reference_cost(probs_sorted, cuts, m):
    """docs/cutoffs.md's C, in plain Python, for `probs_sorted` in the given order."""
    total = math.fsum(probs_sorted)
    p = [x / total for x in probs_sorted]
    n, tails = len(p), len(cuts)

    def g(rows, cols, inner):
        return m.c_us + 2 / (m.tflops * 1e6) * inner * max(m.k0 * m.b0, cols * rows)

    if not tails:
        return g(m.batch_tokens, n, m.d_model)
    cost = g(m.batch_tokens, cuts[0] + tails, m.d_model)
    bounds = [*cuts, n]
    for i in range(1, tails + 1):
        low, high = bounds[i - 1], bounds[i]
        rows = math.fsum(p[low:high]) * m.batch_tokens
        dim = reference_width(m, i)
        cost += g(rows, dim, m.d_model) + g(rows, high - low, dim)
    return cost


def brute_force(probs_sorted, num_clusters, m):
    """Minimum reference cost over every choice of cutoffs."""
    n = len(probs_sorted)
    return min(
        reference_cost(probs_sorted, cuts, m)
        for cuts in itertools.combinations(range(1, n), num_clusters - 1)
    )


def plain_dp(probs_sorted, num_clusters, m):
    """The O(K N^2) dynamic programme over all (start, end) pairs: the optimal cost."""
    p = np.asarray(probs_sorted) / np.sum(probs_sorted)
    n, tails = p.size, num_clusters - 1
    prefix = np.concatenate([[0.0], np.cumsum(p)])
    lam = 2 / (m.tflops * 1e6)

    def g(rows, cols, inner):
        return m.c_us + lam * inner * np.maximum(m.k0 * m.b0, cols * rows)

    def tail(i, a, b):
        rows = (prefix[b] - prefix[a]) * m.batch_tokens
        dim = reference_width(m, i)
        return g(rows, dim, m.d_model) + g(rows, b - a, dim)

    a = np.arange(n + 1)[:, None]  # start of tail i
    b = np.arange(n + 1)[None, :]  # its end
    best = np.where(np.arange(n + 1) < n, tail(tails, np.arange(n + 1), n), np.inf)
    for i in range(tails - 1, 0, -1):
        feasible = (b > a) & (b <= n - (tails - i))
        best = np.where(feasible, tail(i, a, b) + best[None, :], np.inf).min(axis=1)
    first = np.arange(1, n - tails + 1)
    return float(np.min(g(m.batch_tokens, first + tails, m.d_model) + best[first]))


def zipf(n, seed):
    rng = np.random.default_rng(seed)
    return rng.lognormal(0.0, 0.5, n) / np.arange(1, n + 1) ** 1.1


cost_models = st.builds(
    CostModel,
    batch_tokens=st.sampled_from([1.0, 37.0, 1024.0, 1e5]),
    d_model=st.sampled_from([1, 3, 128]),
    proj_factor=st.sampled_from([1, 2, 4]),
    c_us=st.sampled_from([0.0, 5.0]),
    tflops=st.sampled_from([1.0, 200.0]),
    k0=st.sampled_from([0.0, 1.0, 50.0]),
    b0=st.sampled_from([0.0, 7.0, 2560.0]),
)
values = st.one_of(st.sampled_from([0.0, 0.0, 1.0, 1.0, 2.0, 3.0, 100.0]), st.floats(0.0, 1.0))


@st.composite
def problems(draw):
    num_clusters = draw(st.integers(1, 4))
    n = draw(st.integers(num_clusters, 40))
    probs = draw(st.lists(values, min_size=n, max_size=n).filter(lambda v: sum(v) > 0))
    return np.array(probs), num_clusters


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), cost_models)
def test_optimal_cost_equals_brute_force(problem, model):
    probs, num_clusters = problem
    cuts, cost = optimal_cutoffs(probs, num_clusters, model)
    probs_sorted = sorted(probs, reverse=True)
    assert len(cuts) == num_clusters - 1
    assert all(isinstance(c, int) for c in cuts)
    assert all(a < b for a, b in itertools.pairwise(cuts))
    assert all(0 < c < len(probs) for c in cuts)
    assert math.isclose(cost, reference_cost(probs_sorted, cuts, model), rel_tol=1e-9)
    assert math.isclose(cost, brute_force(probs_sorted, num_clusters, model), rel_tol=1e-9)


@pytest.mark.parametrize("num_clusters", [2, 4, 5])
@pytest.mark.parametrize(
    "model",
    [CostModel(), CostModel(k0=0.0), CostModel(batch_tokens=1e5, d_model=512, proj_factor=2)],
    ids=["defaults", "no-flat-regime", "big-batch"],
)
def test_equals_plain_dynamic_programme(num_clusters, model):
    probs = zipf(400, seed=num_clusters)
    cuts, cost = optimal_cutoffs(probs, num_clusters, model)
    assert math.isclose(cost, plain_dp(np.sort(probs)[::-1], num_clusters, model), rel_tol=1e-9)
    assert math.isclose(
        cost, reference_cost(sorted(probs, reverse=True), cuts, model), rel_tol=1e-9
    )


@pytest.mark.parametrize("k0", [0.0, 5.0, 1e4])
@pytest.mark.parametrize("batch_tokens", [1.0, 1024.0])
def test_tail_cost_satisfies_quadrangle_inequality(k0, batch_tokens):
    """The condition the divide and conquer relies on (docs/cutoffs.md), in every regime."""
    n = 24
    model = CostModel(batch_tokens=batch_tokens, k0=k0, b0=1.0, d_model=64, proj_factor=2)
    probs = np.sort(zipf(n, seed=1) * (np.arange(n) % 5 != 3))[::-1]
    suffix = np.append(np.cumsum(probs[::-1])[::-1], 0.0)
    a, b, c, e = np.meshgrid(*[np.arange(n + 1)] * 4, indexing="ij", sparse=True)
    rng = np.random.default_rng(0)
    for i in (1, 2, 3):

        def tail(low, high, i=i):
            return model.tail_time(i, high - low, suffix[low] - suffix[high])

        slack = tail(a, e) + tail(b, c) - tail(a, c) - tail(b, e)
        ordered = (a < b) & (b < c) & (c < e)
        scale = np.broadcast_to(tail(a, e), slack.shape)
        assert np.all(slack[ordered] >= -1e-12 * scale[ordered])
        # Hence the leftmost argmin of each row, whatever is added per column, is monotone.
        rows, cols = np.arange(n)[:, None], np.arange(n + 1)[None, :]
        matrix = np.where(cols > rows, tail(rows, cols) + rng.random(n + 1) * 1e-4, np.inf)
        assert np.all(np.diff(np.argmin(matrix, axis=1)) >= 0)


def test_one_cluster_is_plain_softmax():
    model = CostModel()
    probs = zipf(100, seed=0)
    cuts, cost = optimal_cutoffs(probs, 1, model)
    assert cuts == ()
    assert math.isclose(cost, model.matmul_time(model.batch_tokens, 100, model.d_model))


def test_tiny_vocabularies_and_zero_probabilities():
    assert optimal_cutoffs([3.0], 1)[0] == ()
    assert optimal_cutoffs([1.0, 2.0], 2)[0] == (1,)
    assert optimal_cutoffs([5.0, 0.0, 0.0], 3)[0] == (1, 2)
    cuts, _ = optimal_cutoffs([1.0] + [0.0] * 30, 4)
    assert len(cuts) == 3 and 0 < cuts[0] < cuts[1] < cuts[2] < 31


def test_rejects_infeasible_or_invalid_inputs():
    with pytest.raises(ValueError, match="cannot split a vocabulary of 3 entries into 4"):
        optimal_cutoffs([1.0, 2.0, 3.0], 4)
    with pytest.raises(ValueError, match="num_clusters"):
        optimal_cutoffs([1.0, 2.0], 0)
    for bad in ([], [0.0, 0.0], [1.0, -1.0], [1.0, np.nan], [1.0, np.inf]):
        with pytest.raises(ValueError):
            optimal_cutoffs(bad, 1)
    with pytest.raises(ValueError, match="strictly increasing"):
        CostModel().cost(np.ones(10), (5, 5))
    with pytest.raises(ValueError, match="tflops"):
        CostModel(tflops=0.0)
    with pytest.raises(ValueError, match="proj_factor"):
        CostModel(proj_factor=0)


def test_order_and_scale_do_not_matter():
    counts = np.round(zipf(300, seed=2) * 1e6)
    shuffled = np.random.default_rng(0).permutation(counts)
    expected = optimal_cutoffs(np.sort(counts)[::-1] / counts.sum(), 3)
    cuts, cost = optimal_cutoffs(shuffled, 3)
    assert cuts == expected[0] and math.isclose(cost, expected[1], rel_tol=1e-12)


def test_reader_counts_and_probabilities_agree(tmp_path):
    counts = np.round(zipf(500, seed=3) * 1e5).astype(np.int64)
    counts = np.random.default_rng(1).permutation(counts)  # ids not in frequency order
    unigram = tmp_path / "unigram.txt"
    write_unigram(unigram, [f"piece{i}" for i in range(counts.size)], counts)
    plain = tmp_path / "counts.txt"
    plain.write_text("".join(f"{c}\n" for c in counts) + "\n\n")  # trailing blank lines are fine
    from_probs, from_counts = read_unigram_file(unigram), read_unigram_file(plain)
    np.testing.assert_array_equal(from_counts, counts)  # file order, not sorted
    np.testing.assert_allclose(from_probs, counts / counts.sum(), rtol=1e-8)
    cuts_probs, cost_probs = optimal_cutoffs(from_probs, 4)
    cuts_counts, cost_counts = optimal_cutoffs(from_counts, 4)
    assert cuts_probs == cuts_counts
    assert math.isclose(cost_probs, cost_counts, rel_tol=1e-6)


def test_reader_keeps_odd_pieces_on_their_line(tmp_path):
    path = tmp_path / "unigram.txt"
    pieces = ["a\u2028b", "c\x85d", "e\x1cf", "g\rh", "\u3000"]
    write_unigram(path, pieces, np.array([5, 4, 3, 2, 1]))
    np.testing.assert_allclose(read_unigram_file(path), np.array([5, 4, 3, 2, 1]) / 15)


@pytest.mark.parametrize(
    "bad_line, shown",
    [
        ("7\tfoo\t12\tabc", "'abc'"),
        ("-3", "'-3'"),
        ("nan", "'nan'"),
        ("1e999", "'1e999'"),
        ("   ", "blank line"),
    ],
)
def test_reader_names_the_bad_line(tmp_path, bad_line, shown):
    path = tmp_path / "unigram.txt"
    path.write_text(f"5\n4\n{bad_line}\n1\n")
    with pytest.raises(ValueError) as error:
        read_unigram_file(path)
    assert f"{path}:3:" in str(error.value) and shown in str(error.value)


@pytest.mark.parametrize("text, message", [("", "empty"), ("\n\n", "empty"), ("0\n0\n", "zero")])
def test_reader_rejects_empty_or_zero_files(tmp_path, text, message):
    path = tmp_path / "unigram.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_unigram_file(path)


def test_comparison_with_base_configuration_and_plain_softmax():
    counts = zipf(3000, seed=4)
    probs = np.sort(counts / counts.sum())[::-1]
    model = CostModel(c_us=0.5)  # cheap products: the optimum beats a plain softmax
    three = compare_cutoffs(counts, 3, model)
    cuts, cost = optimal_cutoffs(counts, 3, model)
    assert three.cutoffs == cuts and math.isclose(three.cost, cost, rel_tol=1e-12)
    assert math.isclose(three.base_cost, model.cost(probs, BASE_CUTOFFS), rel_tol=1e-12)
    assert math.isclose(three.plain_cost, model.cost(probs, ()), rel_tol=1e-12)
    assert math.isclose(sum(three.cluster_times), three.cost, rel_tol=1e-12)
    assert three.faster_than_plain and three.recommended_cutoffs == three.cutoffs
    assert compare_cutoffs(counts, 4, model).base_cost is None  # base_model.sh has 3 clusters
    plain = compare_cutoffs(counts, 1, model)
    assert plain.cutoffs == plain.recommended_cutoffs == ()


def test_cutoffs_slower_than_a_plain_softmax_are_not_recommended():
    counts = zipf(3000, seed=4)
    comparison = compare_cutoffs(counts, 3)  # default model: every adaptive softmax is slower
    assert comparison.cost > comparison.plain_cost
    assert not comparison.faster_than_plain
    assert comparison.cutoffs and comparison.recommended_cutoffs == ()


def run_cli(*args):
    return run_script("optimal_cuts.py", *args, timeout=60)


def test_cli_prints_flags_line(tmp_path):
    counts = np.round(zipf(2000, seed=5) * 1e5).astype(np.int64)
    path = tmp_path / "unigram.txt"
    write_unigram(path, [f"p{i}" for i in range(counts.size)], counts)
    result = run_cli(f"--filename={path}", "--clusters=4", "--d_model=256", "--c_us=0.5")
    assert result.returncode == 0, result.stderr
    model = CostModel(d_model=256, c_us=0.5)
    assert compare_cutoffs(read_unigram_file(path), 4, model).faster_than_plain
    cuts, _ = optimal_cutoffs(read_unigram_file(path), 4, model)
    assert result.stdout.splitlines()[-1] == " ".join(f"--cutoffs={c}" for c in cuts)
    assert "does not apply" in result.stdout  # the base cutoffs are 3 clusters


def test_cli_recommends_a_plain_softmax_over_slower_cutoffs(tmp_path):
    """Issue 13 item 10: cutoffs the model rates slower than a plain softmax are not advised."""
    path = tmp_path / "counts.txt"
    path.write_text("".join(f"{c:.6g}\n" for c in zipf(3000, seed=4)))
    result = run_cli(f"--filename={path}", "--clusters=3", "--verbose=false")
    assert result.returncode == 0, result.stderr
    cuts, _ = optimal_cutoffs(read_unigram_file(path), 3)
    assert f"Optimal cutoffs for 3 cluster(s): {list(cuts)}" in result.stdout
    assert "optimal is" in result.stdout  # still compared with the base cutoffs
    assert "not faster than a plain softmax" in result.stdout
    assert result.stdout.splitlines()[-2].startswith('train.py flags (base_model.sh: CUTOFFS="0"')
    assert result.stdout.splitlines()[-1] == "--cutoffs=0"


def test_cli_reports_bad_file_without_traceback(tmp_path):
    path = tmp_path / "unigram.txt"
    path.write_text("10\n3\noops\n")
    result = run_cli(f"--filename={path}")
    assert result.returncode != 0
    assert f"{path}:3:" in result.stderr and "'oops'" in result.stderr
    assert "Traceback" not in result.stderr
