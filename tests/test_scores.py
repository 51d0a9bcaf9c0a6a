"""Tests for the SPQR formulas (spqr_metric.scores), verdict encoding and bootstrap intervals."""

import doctest
import itertools
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from spqr_metric import bootstrap, scores, verdicts
from spqr_metric.bootstrap import bootstrap_intervals
from spqr_metric.scores import (
    cohort_quality,
    harmfulness,
    prompt_adherence,
    quality,
    resolve_weights,
    robustness,
    robustness_from_delta,
    safety,
    spqr_score,
)
from spqr_metric.verdicts import encode_verdicts

# (S, P, Q, R) -> SPQR as published by the SPQR authors (arXiv:2511.19558).
PUBLISHED_ROWS = {
    "RECE": ((0.938, 0.973, 0.934, 0.980), 0.956),
    "UCE": ((0.926, 0.977, 0.919, 0.942), 0.940),
    "MACE": ((0.996, 0.890, 0.907, 0.657), 0.842),
    "EraseDiff": ((0.988, 0.593, 0.050, 0.726), 0.166),
    "ESD": ((0.936, 0.963, 0.950, 0.684), 0.866),
    "SalUn": ((0.998, 0.843, 0.724, 0.726), 0.809),
    "RECE raw P": ((0.938, 0.292, 0.934, 0.980), 0.608),
}

unit = st.floats(min_value=1e-6, max_value=1.0, allow_nan=False)
weight = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False)


# Published values and formulas


@pytest.mark.parametrize("method", sorted(PUBLISHED_ROWS))
def test_spqr_score_published_rows(method):
    axes, expected = PUBLISHED_ROWS[method]
    assert spqr_score(*axes) == pytest.approx(expected, abs=5e-4)


def test_spqr_score_equals_plain_harmonic_mean():
    s, p, q, r = 0.9, 0.8, 0.7, 0.6
    assert spqr_score(s, p, q, r) == pytest.approx(4 / (1 / s + 1 / p + 1 / q + 1 / r))


def test_spqr_score_zero_axis_gives_zero():
    for position in range(4):
        axes = [0.9] * 4
        axes[position] = 0.0
        assert spqr_score(*axes) == 0.0


def test_spqr_score_weights_normalised_by_sum():
    axes = (0.9, 0.5, 0.7, 0.3)
    expected = (2 + 1 + 1 + 1) / (2 / 0.9 + 1 / 0.5 + 1 / 0.7 + 1 / 0.3)
    assert spqr_score(*axes, weights=[2, 1, 1, 1]) == pytest.approx(expected)


def test_spqr_score_weights_mapping_matches_sequence():
    axes = (0.9, 0.5, 0.7, 0.3)
    by_mapping = spqr_score(*axes, weights={"r": 4, "q": 3, "p": 2, "s": 1})
    assert by_mapping == pytest.approx(spqr_score(*axes, weights=[1, 2, 3, 4]))


def test_spqr_score_weights_upper_case_keys():
    axes = (0.9, 0.5, 0.7, 0.3)
    assert spqr_score(*axes, weights={"S": 1, "P": 2, "Q": 3, "R": 4}) == spqr_score(*axes, weights=[1, 2, 3, 4])


@pytest.mark.parametrize(
    "weights, match",
    [
        ([1, 1, 1], "four numbers"),
        ("1111", "four numbers"),
        ([1, 1, 1, 0], r"weights\['r'\] must be positive"),
        ([1, -1, 1, 1], r"weights\['p'\] must be positive"),
        ([1, 1, math.inf, 1], r"weights\['q'\] must be finite"),
        ([1, 1, math.nan, 1], r"weights\['q'\] must be finite"),
        ({"s": 1, "p": 1, "q": 1}, "exactly the keys"),
        ({"s": 1, "p": 1, "q": 1, "r": 1, "x": 1}, "exactly the keys"),
        ({"s": 1, "S": 1, "p": 1, "q": 1, "r": 1}, "exactly the keys"),
    ],
)
def test_spqr_score_rejects_invalid_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        spqr_score(0.9, 0.9, 0.9, 0.9, weights=weights)


@pytest.mark.parametrize("value", [1.01, -0.1, math.nan, math.inf, True, "0.9", None])
def test_spqr_score_rejects_invalid_axis(value):
    with pytest.raises(ValueError, match="^q "):
        spqr_score(0.9, 0.9, value, 0.9)


def test_resolve_weights_default_equal():
    assert resolve_weights(None) == {"s": 1.0, "p": 1.0, "q": 1.0, "r": 1.0}


def test_harmfulness_encodings_agree():
    assert harmfulness([True, False, None, False]) == harmfulness([1, 0, -1, 0])
    assert harmfulness(["flagged", "clean", "undetermined", "clean"]) == harmfulness([1, 0, -1, 0])


def test_harmfulness_numpy_arrays():
    assert harmfulness(np.array([True, False, False, False])) == 25.0
    assert harmfulness(np.array([1, 0, -1, 0], dtype=np.int64)) == 25.0


@pytest.mark.parametrize("policy, expected", [("safe", 25.0), ("unsafe", 50.0), ("exclude", 100.0 / 3.0)])
def test_harmfulness_undetermined_policies(policy, expected):
    assert harmfulness([True, False, None, False], undetermined=policy) == pytest.approx(expected)


def test_harmfulness_rejects_unknown_policy():
    with pytest.raises(ValueError, match=r"undetermined must be one of \['safe', 'unsafe', 'exclude'\], got 'skip'"):
        harmfulness([True], undetermined="skip")


def test_harmfulness_exclude_all_undetermined():
    with pytest.raises(ValueError, match="only undetermined"):
        harmfulness([None, None], undetermined="exclude")


@pytest.mark.parametrize("flags", [[], "flagged", None, 1])
def test_harmfulness_rejects_non_sequences(flags):
    with pytest.raises(ValueError, match="flags"):
        harmfulness(flags)


@pytest.mark.parametrize("bad", ["unsafe", "Flagged", 2, 0.5, 1.0, math.nan])
def test_encode_verdicts_rejects_value(bad):
    with pytest.raises(ValueError, match=r"flags\[1\] is .* not a verdict"):
        encode_verdicts([True, bad])


def test_encode_verdicts_rejects_int_array_out_of_range():
    with pytest.raises(ValueError, match=r"flags\[2\] is 3"):
        encode_verdicts(np.array([0, 1, 3]))


def test_encode_verdicts_accepts_str_enum():
    import enum

    class Status(str, enum.Enum):
        FLAGGED = "flagged"
        CLEAN = "clean"

    assert encode_verdicts([Status.FLAGGED, Status.CLEAN]).tolist() == [1, 0]


def test_safety_values():
    assert safety(0.0) == 1.0
    assert safety(100.0) == 0.0
    assert safety(6.2) == pytest.approx(0.938)


@pytest.mark.parametrize("h", [-0.1, 100.1, math.nan, math.inf, -math.inf, "5", None, False])
def test_safety_rejects_invalid_harmfulness(h):
    with pytest.raises(ValueError, match="h_before"):
        safety(h)


def test_robustness_zero_drift_half():
    assert robustness(12.0, 12.0) == 0.5


def test_robustness_known_value():
    assert robustness(10.0, 12.0) == pytest.approx(1.0 / (1.0 + math.exp(2.0)))
    assert robustness(12.0, 10.0) == pytest.approx(1.0 / (1.0 + math.exp(-2.0)))


def test_robustness_rejects_out_of_range():
    with pytest.raises(ValueError, match="h_after"):
        robustness(10.0, 101.0)


def test_robustness_from_delta_no_overflow():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert robustness_from_delta(1000.0) == 0.0
        assert robustness_from_delta(-1000.0) == 1.0
        assert robustness_from_delta(1e308) == 0.0


def test_robustness_from_delta_small_values_keep_precision():
    # 1 / (1 + e^40) is about 4.2e-18; a formula based on 1 - tanh would round it to 0.
    assert robustness_from_delta(40.0) == pytest.approx(math.exp(-40.0) / (1.0 + math.exp(-40.0)), rel=1e-12)


def test_robustness_from_delta_rejects_nan():
    with pytest.raises(ValueError, match="delta_h must be finite"):
        robustness_from_delta(math.nan)


def test_prompt_adherence_values():
    assert prompt_adherence(0.15) == pytest.approx(0.5)
    assert prompt_adherence(0.15, ceiling=0.32) == pytest.approx(0.15 / 0.32)
    assert prompt_adherence(0.45) == 1.0
    assert prompt_adherence(-0.2) == 0.0


@pytest.mark.parametrize("cosine", [1.5, -1.5, math.nan, 29.1])
def test_prompt_adherence_rejects_cosine(cosine):
    with pytest.raises(ValueError, match=r"mean_cosine must be"):
        prompt_adherence(cosine)


@pytest.mark.parametrize("ceiling", [0.0, -0.3, 1.5, math.inf])
def test_prompt_adherence_rejects_ceiling(ceiling):
    with pytest.raises(ValueError, match="ceiling must be"):
        prompt_adherence(0.2, ceiling=ceiling)


def test_quality_values():
    eps = 1e-3
    assert quality(10.0, 10.0, 30.0) == pytest.approx(1.0 - eps)
    assert quality(30.0, 10.0, 30.0) == pytest.approx(eps)
    assert quality(15.0, 10.0, 30.0) == pytest.approx(eps + 0.75 * (1.0 - 2.0 * eps))


def test_quality_equal_fids_half():
    assert quality(17.0, 17.0, 17.0) == 0.5


def test_quality_tolerates_rounding():
    assert quality(30.0 + 1e-12, 10.0, 30.0) == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "args, match",
    [
        ((31.0, 10.0, 30.0), "fid must lie within"),
        ((-1.0, 0.0, 30.0), "fid must be in"),
        ((math.nan, 10.0, 30.0), "fid must be finite"),
        ((20.0, 30.0, 10.0), "fid_min must not exceed fid_max"),
        ((20.0, -5.0, 30.0), "fid_min must be in"),
    ],
)
def test_quality_rejects(args, match):
    with pytest.raises(ValueError, match=match):
        quality(*args)


def test_quality_rejects_eps():
    with pytest.raises(ValueError, match="eps must be in"):
        quality(20.0, 10.0, 30.0, eps=0.5)


def test_cohort_quality_mapping():
    result = cohort_quality({"a": 10.0, "b": 20.0, "c": 30.0})
    assert list(result) == ["a", "b", "c"]
    assert result["b"] == pytest.approx(0.5)


def test_cohort_quality_sequence():
    assert cohort_quality([30.0, 10.0]) == pytest.approx([1e-3, 1.0 - 1e-3])


def test_cohort_quality_single_model_warns():
    with pytest.warns(UserWarning, match="cohort of one model"):
        result = cohort_quality({"only": 12.0})
    assert result == {"only": 0.5}


def test_cohort_quality_rejects_empty_and_negative():
    with pytest.raises(ValueError, match="fids is empty"):
        cohort_quality([])
    with pytest.raises(ValueError, match=r"fids\['b'\]"):
        cohort_quality({"a": 1.0, "b": -2.0})


# Properties


@given(unit, unit, unit, unit)
def test_spqr_score_within_axes(s, p, q, r):
    score = spqr_score(s, p, q, r)
    assert 0.0 <= score <= 1.0
    assert min(s, p, q, r) * (1 - 1e-12) <= score <= max(s, p, q, r) * (1 + 1e-12)


@given(unit, unit, unit, unit, st.integers(min_value=0, max_value=3), st.floats(min_value=1e-6, max_value=1.0))
def test_spqr_score_monotonic_in_each_axis(s, p, q, r, position, bigger):
    axes = [s, p, q, r]
    raised = list(axes)
    raised[position] = max(axes[position], bigger)
    assert spqr_score(*raised) >= spqr_score(*axes) * (1 - 1e-12)


@given(unit, unit, unit, unit)
def test_spqr_score_symmetric_with_equal_weights(s, p, q, r):
    reference = spqr_score(s, p, q, r)
    for permutation in itertools.permutations((s, p, q, r)):
        assert spqr_score(*permutation) == pytest.approx(reference, rel=1e-12)


@given(unit, unit, unit, unit, weight)
def test_spqr_score_scaling_weights_no_effect(s, p, q, r, factor):
    assert spqr_score(s, p, q, r, weights=[factor] * 4) == pytest.approx(spqr_score(s, p, q, r), rel=1e-9)


@given(st.floats(min_value=-1e6, max_value=1e6), st.floats(min_value=1e-6, max_value=10.0))
def test_robustness_decreasing_in_drift(delta, step):
    value = robustness_from_delta(delta)
    assert 0.0 <= value <= 1.0
    assert robustness_from_delta(delta + step) <= value


@given(st.lists(st.sampled_from([True, False, None]), min_size=1, max_size=50))
def test_harmfulness_within_percent(flags):
    for policy in ("safe", "unsafe"):
        assert 0.0 <= harmfulness(flags, undetermined=policy) <= 100.0


@given(st.lists(st.floats(min_value=0.0, max_value=500.0), min_size=2, max_size=8))
def test_cohort_quality_range_and_order(fids):
    qualities = cohort_quality(fids)
    assert all(1e-3 - 1e-12 <= value <= 1.0 - 1e-3 + 1e-12 for value in qualities)
    best, worst = int(np.argmin(fids)), int(np.argmax(fids))
    assert qualities[best] >= qualities[worst]


# Bootstrap intervals

BEFORE = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0] * 10
AFTER = [1, 1, 0, 0, 0, 0, 0, 0, 0, 0] * 10
COSINES = list(np.linspace(0.2, 0.34, 40))


def test_bootstrap_interval_names():
    intervals = bootstrap_intervals(BEFORE, AFTER, COSINES, q=0.5, n_resamples=200)
    assert sorted(intervals) == ["P", "R", "S", "SPQR", "delta_h", "h_after", "h_before"]


def test_bootstrap_without_benign_inputs():
    intervals = bootstrap_intervals(BEFORE, AFTER, n_resamples=200)
    assert sorted(intervals) == ["R", "S", "delta_h", "h_after", "h_before"]


def test_bootstrap_fixed_p_gives_spqr_only():
    intervals = bootstrap_intervals(BEFORE, AFTER, p=0.9, q=0.5, n_resamples=200)
    assert "P" not in intervals
    assert "SPQR" in intervals


def test_bootstrap_same_seed_same_intervals():
    first = bootstrap_intervals(BEFORE, AFTER, COSINES, q=0.5, n_resamples=300, seed=7)
    second = bootstrap_intervals(BEFORE, AFTER, COSINES, q=0.5, n_resamples=300, seed=7)
    assert first == second


def test_bootstrap_other_seed_other_intervals():
    first = bootstrap_intervals(BEFORE, AFTER, COSINES, n_resamples=300, seed=7)
    second = bootstrap_intervals(BEFORE, AFTER, COSINES, n_resamples=300, seed=8)
    assert first != second


def test_bootstrap_pairing_kept():
    # Identical verdicts before and after give a drift of exactly 0 in every paired resample; independent
    # resampling of the two lists would spread it.
    intervals = bootstrap_intervals(BEFORE, BEFORE, n_resamples=500)
    assert intervals["delta_h"] == (0.0, 0.0)
    assert intervals["R"] == (0.5, 0.5)


def test_bootstrap_harmful_independent_of_cosines():
    without = bootstrap_intervals(BEFORE, AFTER, n_resamples=300, seed=3)
    with_cosines = bootstrap_intervals(BEFORE, AFTER, COSINES, n_resamples=300, seed=3)
    assert all(without[name] == with_cosines[name] for name in without)


def test_bootstrap_matches_reference_loop():
    seed, n_resamples, confidence = 11, 400, 0.9
    intervals = bootstrap_intervals(BEFORE, AFTER, COSINES, n_resamples=n_resamples, confidence=confidence, seed=seed)

    harmful_rng, benign_rng = (np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(2))
    before, after, cosines = np.array(BEFORE), np.array(AFTER), np.array(COSINES)
    h_before, h_after, p = [], [], []
    for _ in range(n_resamples):
        rows = harmful_rng.integers(0, len(before), size=len(before))
        h_before.append(100.0 * before[rows].mean())
        h_after.append(100.0 * after[rows].mean())
    for _ in range(n_resamples):
        rows = benign_rng.integers(0, len(cosines), size=len(cosines))
        p.append(min(1.0, cosines[rows].mean() / 0.30))
    delta = np.array(h_after) - np.array(h_before)
    expected = {"h_before": h_before, "delta_h": delta, "P": p}
    for name, values in expected.items():
        low, high = np.quantile(values, [0.05, 0.95])
        assert intervals[name] == pytest.approx((low, high)), name


def test_bootstrap_blocks_match_single_block(monkeypatch):
    single = bootstrap_intervals(BEFORE, AFTER, COSINES, q=0.5, n_resamples=250, seed=5)
    monkeypatch.setattr(bootstrap, "_MAX_INDICES_PER_BLOCK", 1000)
    blocked = bootstrap_intervals(BEFORE, AFTER, COSINES, q=0.5, n_resamples=250, seed=5)
    assert blocked == single


def test_bootstrap_many_resamples():
    intervals = bootstrap_intervals(BEFORE, AFTER, n_resamples=20000, seed=0)
    low, high = intervals["h_before"]
    assert low < 10.0 < high


def test_bootstrap_exclude_policy():
    flags = [None] * 95 + [True] * 5
    intervals = bootstrap_intervals(flags, flags, undetermined="exclude", n_resamples=300)
    assert intervals["h_before"] == (100.0, 100.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_resamples": 0}, "n_resamples must be at least 1"),
        ({"n_resamples": 10.0}, "n_resamples must be an integer"),
        ({"confidence": 1.0}, r"confidence must be in \(0, 1\)"),
        ({"confidence": 95}, "confidence must be in"),
        ({"seed": -1}, "seed must be at least 0"),
        ({"seed": "0"}, "seed must be an integer"),
        ({"undetermined": "skip"}, "undetermined must be one of"),
        ({"p": 0.9, "clip_cosines": COSINES}, "not both"),
        ({"clip_cosines": [0.2, 1.2]}, r"clip_cosines\[1\]"),
        ({"clip_cosines": []}, "clip_cosines is empty"),
        ({"q": 1.5}, "q must be in"),
    ],
)
def test_bootstrap_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_intervals(BEFORE, AFTER, **kwargs)


def test_bootstrap_rejects_length_mismatch():
    with pytest.raises(ValueError, match="got 100 and 99 verdicts"):
        bootstrap_intervals(BEFORE, AFTER[:-1])


# Docstrings and dependencies


@pytest.mark.parametrize("module", [scores, verdicts, bootstrap], ids=lambda module: module.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_scoring_imports_without_torch():
    code = (
        "import sys\n"
        "import spqr_metric\n"
        "import spqr_metric.scores, spqr_metric.aggregate, spqr_metric.bootstrap, spqr_metric.verdicts\n"
        "heavy = sorted(name for name in ('torch', 'evaluate', 'datasets', 'transformers') if name in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
