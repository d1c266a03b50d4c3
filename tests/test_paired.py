"""Paired statistics of the benchmark: differences per (seed, volume), bootstrap interval, Wilcoxon."""

from __future__ import annotations

import numpy as np
import pytest

from cdiff_cli.eval.paired import bootstrap_ci, compare, paired_matrix, wilcoxon_p


def test_pairs_are_matched_by_seed_and_subject_and_a_single_seed_is_broadcast() -> None:
    ours = {(0, "a"): 0.5, (0, "b"): 0.4, (1, "a"): 0.7, (1, "b"): 0.2, (1, "c"): 0.9}
    other = {(0, "a"): 0.1, (0, "b"): 0.3, (1, "a"): 0.2, (1, "b"): 0.1}
    assert paired_matrix(ours, other).round(6).tolist() == [[0.4, 0.1], [0.5, 0.1]]  # "c" is unpaired
    ref = {(0, "a"): 0.0, (0, "b"): 0.1}  # one seed (a reference): paired with every seed of ours
    assert paired_matrix(ours, ref).round(6).tolist() == [[0.5, 0.3], [0.7, 0.1]]
    assert paired_matrix(ours, {}).size == 0 and compare(ours, {}) is None


def test_bootstrap_interval_is_seeded_and_covers_the_mean() -> None:
    d = np.array([[0.1, 0.3, -0.2, 0.4], [0.2, 0.1, 0.0, 0.5]])
    a, b = bootstrap_ci(d, 1000, seed=3), bootstrap_ci(d, 1000, seed=3)
    assert a == b and a[0] == pytest.approx(d.mean()) and a[1] < a[0] < a[2]
    # brute force: the bootstrap mean of means over the resampled grid equals the sample mean in expectation
    assert np.mean([bootstrap_ci(d, 200, seed=s)[0] for s in range(3)]) == pytest.approx(0.175)
    with pytest.raises(ValueError):
        bootstrap_ci(np.zeros((0, 3)))


def test_wilcoxon_matches_the_exact_distribution_by_hand() -> None:
    # ranks 1..4, all positive but one: W- = 1 (the smallest |d| is negative); of the 16 sign patterns,
    # W- <= 1 happens twice (W- = 0, 1) per tail -> two-sided p = 4 / 16
    assert wilcoxon_p(np.array([[-0.1, 0.2, 0.3, 0.4]])) == pytest.approx(0.25)
    assert wilcoxon_p(np.zeros((2, 5))) is None and wilcoxon_p(np.array([[0.3]])) is None
    # averaged over seeds first: the same p-value for the seeds' mean
    assert wilcoxon_p(np.array([[-0.2, 0.1, 0.3, 0.5], [0.0, 0.3, 0.3, 0.3]])) == pytest.approx(0.25)


def test_compare_reports_difference_interval_p_and_per_seed_means() -> None:
    ours = {(s, v): 0.5 + 0.1 * s + 0.01 * i for s in range(3) for i, v in enumerate("abcdef")}
    other = {(s, v): 0.4 for s in range(3) for v in "abcdef"}
    c = compare(ours, other, n_resamples=500)
    assert c is not None and c["seeds"] == 3 and c["volumes"] == 6 and c["resamples"] == 500
    assert c["per_seed"] == pytest.approx([0.125, 0.225, 0.325])
    assert c["diff"] == pytest.approx(0.225) and 0.1 < c["ci"][0] < c["diff"] < c["ci"][1] < 0.35
    assert c["p"] == pytest.approx(0.03125)  # all six positive: 2 / 2^6


def test_doctests_pass() -> None:
    import doctest

    from cdiff_cli.eval import paired

    result = doctest.testmod(paired)
    assert result.attempted >= 4 and result.failed == 0
