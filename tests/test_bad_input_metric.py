"""Invalid inputs to the scoring functions, and properties that hold for every valid input.

Most invalid inputs are tested next to the code they check: empty lists, mismatched lengths, duplicate prompt
ids, cosines outside [-1, 1], a negative FID and invalid settings in test_aggregate.py
(test_score_run_rejects); NaN and infinite axes, weights <= 0 and invalid verdicts in test_scores.py; unknown
judge names and judge settings in test_judges_registry.py and test_metric_images.py
(test_load_rejects_image_setting). This file adds the non-finite values those tables leave out, the evaluate
module's buffer checks, and property-based tests of the formulas.
"""

import itertools
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spqr_metric.aggregate import score_run
from spqr_metric.bootstrap import bootstrap_intervals
from spqr_metric.scores import (
    cohort_quality,
    harmfulness,
    prompt_adherence,
    quality,
    resolve_weights,
    robustness,
    safety,
    spqr_score,
)

BEFORE = ["clean", "flagged", "clean", "clean"]
AFTER = ["flagged", "flagged", "clean", "clean"]
NON_FINITE = [math.nan, math.inf, -math.inf]


def _score(**overrides):
    inputs = {"harmful_before": BEFORE, "harmful_after": AFTER, "clip_cosines": [0.3, 0.25], "fid": 15.0,
              "fid_bounds": [10.0, 20.0], "bootstrap": 0}
    inputs.update(overrides)
    return score_run(**inputs)


# ---------------------------------------------------------------- non-finite and out-of-range numbers


@pytest.mark.parametrize("value", NON_FINITE)
def test_score_run_rejects_non_finite_cosine(value):
    with pytest.raises(ValueError, match=r"clip_cosines\[1\] must be finite"):
        _score(clip_cosines=[0.3, value])


@pytest.mark.parametrize("value", NON_FINITE)
def test_score_run_rejects_non_finite_mean_cosine(value):
    with pytest.raises(ValueError, match="mean_cosine must be finite"):
        _score(clip_cosines=None, mean_cosine=value)


@pytest.mark.parametrize("value", NON_FINITE)
def test_score_run_rejects_non_finite_fid(value):
    with pytest.raises(ValueError, match="fid must be finite"):
        _score(fid=value)


@pytest.mark.parametrize("value", NON_FINITE)
def test_score_run_rejects_non_finite_fid_bound(value):
    with pytest.raises(ValueError, match=r"fid_bounds\[1\] must be finite"):
        _score(fid_bounds=[10.0, value])


@pytest.mark.parametrize("cosine", [-1.0000001, -1.5, 1.0000001, 100.0])
def test_score_run_rejects_cosine_outside_unit(cosine):
    with pytest.raises(ValueError, match=r"clip_cosines\[0\] must be in \[-1, 1\]"):
        _score(clip_cosines=[cosine, 0.2])


@pytest.mark.parametrize("cosine", [-1.0, 1.0])
def test_score_run_accepts_cosine_bounds(cosine):
    result = _score(clip_cosines=[cosine, cosine])
    assert result["scores"]["P"] == (1.0 if cosine > 0 else 0.0)


def test_score_run_rejects_numpy_nan_cosine():
    with pytest.raises(ValueError, match=r"clip_cosines\[0\] must be finite"):
        _score(clip_cosines=np.array([np.nan, 0.3]))


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0])
def test_score_run_rejects_weight(value):
    with pytest.raises(ValueError, match=r"weights\['s'\] must be"):
        _score(weights=[value, 1, 1, 1])


def test_score_run_rejects_zero_weight():
    with pytest.raises(ValueError, match=r"weights\['r'\] must be positive, got 0.0"):
        _score(weights=[1, 1, 1, 0])


@pytest.mark.parametrize("fids", [[10.0, math.nan], [10.0, math.inf], [10.0, -0.5]])
def test_cohort_quality_rejects_fid(fids):
    with pytest.raises(ValueError, match=r"fids\[1\] must"):
        cohort_quality(fids)


def test_cohort_quality_rejects_string():
    with pytest.raises(ValueError, match="fids must be a mapping or a sequence"):
        cohort_quality("10, 20")


@pytest.mark.parametrize("flags", [[1.0, 0.0], np.array([1.0, 0.0]), [np.nan], ["clean", "Clean"]])
def test_harmfulness_rejects_non_verdicts(flags):
    with pytest.raises(ValueError, match="which is not a verdict"):
        harmfulness(flags)


def test_harmfulness_rejects_two_dimensional():
    with pytest.raises(ValueError, match="must be one-dimensional"):
        harmfulness(np.zeros((2, 2), dtype=bool))


def test_bootstrap_rejects_cosines_outside_unit():
    with pytest.raises(ValueError, match=r"clip_cosines\[2\] must be in \[-1, 1\]"):
        bootstrap_intervals(BEFORE, AFTER, [0.1, 0.2, -3.0], n_resamples=10)


def test_spqr_score_subnormal_axis_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert spqr_score(0.9, 5e-324, 0.9, 0.9, weights=[1, 1000, 1, 1]) == 0.0


def test_spqr_score_rejects_negative_infinity():
    with pytest.raises(ValueError, match="^p must be finite"):
        spqr_score(0.9, -math.inf, 0.9, 0.9)


# ---------------------------------------------------------------- the evaluate module's buffer


@pytest.fixture(scope="module")
def metric():
    from pathlib import Path

    import evaluate

    return evaluate.load(str(Path(__file__).resolve().parents[1] / "spqr_metric"), bootstrap=0)


def test_metric_add_batch_length_mismatch(metric):
    with pytest.raises(ValueError, match="harmful_before and harmful_after must have the same length, got 2 and 3"):
        metric.add_batch(harmful_before=["clean", "clean"], harmful_after=["clean", "clean", "flagged"])


def test_metric_add_batch_empty(metric):
    with pytest.raises(ValueError, match="harmful_before is empty"):
        metric.add_batch(harmful_before=[], harmful_after=[])


def test_metric_rejects_nan_fid(metric):
    with pytest.raises(ValueError, match="fid must be finite"):
        metric.compute(harmful_before=BEFORE, harmful_after=AFTER, mean_cosine=0.3, fid=math.nan)


def test_metric_rejects_negative_fid(metric):
    with pytest.raises(ValueError, match="fid must be in"):
        metric.compute(harmful_before=BEFORE, harmful_after=AFTER, mean_cosine=0.3, fid=-2.0,
                       fid_bounds=[0.0, 10.0])


def test_metric_rejects_duplicate_ids_in_one_batch(metric):
    with pytest.raises(ValueError, match=r"prompt_ids\[2\] repeats 'a'"):
        metric.compute(harmful_before=BEFORE[:3], harmful_after=AFTER[:3], prompt_ids=["a", "b", "a"],
                       mean_cosine=0.3, fid=15.0, fid_bounds=[10.0, 20.0])


# ---------------------------------------------------------------- properties of the formulas

unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
positive_unit = st.floats(min_value=1e-6, max_value=1.0, allow_nan=False)
percent = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)
cosine = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False)
ceiling = st.floats(min_value=1e-3, max_value=1.0, allow_nan=False)
weight = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False)
verdict = st.sampled_from(["flagged", "clean", "undetermined"])


@given(percent, percent)
def test_safety_range_and_order(low, high):
    low, high = sorted((low, high))
    assert 0.0 <= safety(high) <= safety(low) <= 1.0


@given(percent, percent, percent)
def test_robustness_monotonic_in_each_side(before, after, other):
    value = robustness(before, after)
    assert 0.0 <= value <= 1.0
    assert robustness(max(before, other), after) >= value
    assert robustness(before, max(after, other)) <= value


@given(cosine, cosine, ceiling)
def test_prompt_adherence_range_and_order(first, second, limit):
    low, high = sorted((first, second))
    assert 0.0 <= prompt_adherence(low, limit) <= prompt_adherence(high, limit) <= 1.0


@given(cosine, ceiling, ceiling)
def test_prompt_adherence_lower_ceiling_not_lower(mean, first, second):
    low, high = sorted((first, second))
    assert prompt_adherence(mean, low) >= prompt_adherence(mean, high)


@given(st.floats(min_value=0.0, max_value=1e4, allow_nan=False), st.floats(min_value=0.0, max_value=1e4),
       st.floats(min_value=0.0, max_value=1.0), st.floats(min_value=0.0, max_value=1.0))
def test_quality_range_and_decreasing(low, span, first, second):
    high = low + span
    better, worse = sorted((low + first * span, low + second * span))
    assert 1e-3 - 1e-12 <= quality(worse, low, high) <= quality(better, low, high) <= 1.0 - 1e-3 + 1e-12


@given(st.lists(verdict, min_size=1, max_size=40), st.randoms(use_true_random=False))
def test_harmfulness_permutation_invariant(flags, rng):
    shuffled = list(flags)
    rng.shuffle(shuffled)
    for policy in ("safe", "unsafe"):
        assert harmfulness(shuffled, policy) == pytest.approx(harmfulness(flags, policy), abs=1e-12)


@given(st.lists(verdict, min_size=1, max_size=40), st.integers(min_value=0, max_value=39))
def test_harmfulness_flagging_never_lowers(flags, position):
    raised = list(flags)
    raised[position % len(flags)] = "flagged"
    for policy in ("safe", "unsafe", "exclude"):
        if all(flag == "undetermined" for flag in flags) and policy == "exclude":
            continue
        assert harmfulness(raised, policy) >= harmfulness(flags, policy) - 1e-12


@given(st.tuples(unit, unit, unit, unit), st.tuples(weight, weight, weight, weight))
def test_spqr_score_weighted_symmetric(axes, weights):
    reference = spqr_score(*axes, weights=list(weights))
    for order in itertools.permutations(range(4)):
        permuted_axes = [axes[i] for i in order]
        permuted_weights = [weights[i] for i in order]
        assert spqr_score(*permuted_axes, weights=permuted_weights) == pytest.approx(reference, rel=1e-9, abs=1e-12)


@given(st.tuples(positive_unit, positive_unit, positive_unit, positive_unit), st.tuples(weight, weight, weight, weight))
def test_spqr_score_weighted_within_axes(axes, weights):
    score = spqr_score(*axes, weights=list(weights))
    assert min(axes) * (1 - 1e-9) <= score <= max(axes) * (1 + 1e-9)


@given(st.tuples(unit, unit, unit, unit), st.tuples(weight, weight, weight, weight), st.integers(0, 3), unit)
def test_spqr_score_weighted_monotonic(axes, weights, position, bigger):
    raised = list(axes)
    raised[position] = max(axes[position], bigger)
    assert spqr_score(*raised, weights=list(weights)) >= spqr_score(*axes, weights=list(weights)) * (1 - 1e-9)


@given(st.tuples(weight, weight, weight, weight))
def test_resolve_weights_keeps_order(weights):
    assert list(resolve_weights(list(weights)).values()) == pytest.approx(list(weights))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(verdict, verdict), min_size=1, max_size=30),
    st.lists(cosine, min_size=1, max_size=20),
    st.floats(min_value=0.0, max_value=50.0),
    st.sampled_from(["safe", "unsafe"]),
)
def test_score_run_outputs_in_range(pairs, cosines, fid, policy):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = score_run(
            harmful_before=[before for before, _ in pairs],
            harmful_after=[after for _, after in pairs],
            clip_cosines=cosines,
            fid=fid,
            fid_bounds=[0.0, 50.0],
            undetermined=policy,
            bootstrap=20,
        )
    for name, value in result["scores"].items():
        assert 0.0 <= value <= 1.0, name
    for name, (low, high) in result["intervals"].items():
        assert low <= high, name
    assert result["scores"]["S"] == pytest.approx(1.0 - result["raw"]["h_before"] / 100.0)
