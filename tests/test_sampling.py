"""Sampling filters on small distributions whose answers can be worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest

from runner.sampling import (SamplingParams, apply_logit_bias, apply_penalties, candidates, log_softmax,
                             min_p, sample, softmax, top_k, top_p, typical)

pytestmark = pytest.mark.fast

# probabilities 0.5, 0.3, 0.15, 0.05 as logits, listed out of order
PROBS = np.array([0.15, 0.5, 0.05, 0.3])
LOGITS = np.log(PROBS).astype(np.float32)
IDS = np.arange(4)


def test_top_k_keeps_the_k_largest_sorted():
    ids, lg = top_k(IDS, LOGITS, 2)
    assert ids.tolist() == [1, 3]
    assert lg.tolist() == sorted(lg.tolist(), reverse=True)
    assert top_k(IDS, LOGITS, 0)[0].tolist() == [1, 3, 0, 2]      # 0: no limit, still sorted


@pytest.mark.parametrize("p, kept", [(0.4, [1]), (0.75, [1, 3]), (0.9, [1, 3, 0]), (0.99, [1, 3, 0, 2]),
                                     (1.0, [1, 3, 0, 2])])
def test_top_p_smallest_prefix_reaching_p(p, kept):
    ids, lg = top_p(*top_k(IDS, LOGITS, 0), p)
    assert ids.tolist() == kept


@pytest.mark.parametrize("p, kept", [(0.0, [1, 3, 0, 2]), (0.2, [1, 3, 0]), (0.5, [1, 3]), (0.9, [1])])
def test_min_p_relative_to_the_best(p, kept):
    # thresholds 0.5 * p: 0.1 keeps 0.5, 0.3, 0.15; 0.25 keeps 0.5, 0.3; 0.45 keeps 0.5
    ids, _ = min_p(*top_k(IDS, LOGITS, 0), p)
    assert ids.tolist() == kept


# entropy H of 0.5, 0.3, 0.15, 0.05 is 1.142 nats; the surprises -ln p are 0.693, 1.204,
# 1.897, 2.996, so |surprise - H| ranks the tokens 0.3 (0.062), 0.5 (0.449), 0.15 (0.755),
# 0.05 (1.854): typical sampling keeps them in that order until their mass reaches p
@pytest.mark.parametrize("p, kept", [(0.25, [3]), (0.5, [1, 3]), (0.85, [1, 3, 0]), (0.99, [1, 3, 0, 2]),
                                     (1.0, [1, 3, 0, 2])])
def test_typical_keeps_the_tokens_closest_to_the_entropy(p, kept):
    ids, lg = typical(*top_k(IDS, LOGITS, 0), p)
    assert ids.tolist() == kept                                      # in decreasing-logit order
    assert lg.tolist() == LOGITS[kept].tolist()


def test_typical_in_the_chain_can_drop_the_most_likely_token():
    params = SamplingParams(temperature=1.0, top_k=0, typical_p=0.25, top_p=1.0, min_p=0.0)
    assert candidates(LOGITS, params)[0].tolist() == [3]
    rng = np.random.default_rng(0)
    assert {sample(LOGITS, params, rng) for _ in range(50)} == {3}


def test_repeat_penalty_divides_positive_and_multiplies_negative():
    logits = np.array([2.0, -2.0, 1.0, 0.5], dtype=np.float32)
    out = apply_penalties(logits, [0, 1, 1], repeat=2.0, presence=0.0, frequency=0.0)
    assert out.tolist() == [1.0, -4.0, 1.0, 0.5]
    assert logits.tolist() == [2.0, -2.0, 1.0, 0.5]                  # input untouched


def test_presence_and_frequency_penalties_count_occurrences():
    logits = np.zeros(4, dtype=np.float32)
    out = apply_penalties(logits, [2, 2, 2, 3], repeat=1.0, presence=0.5, frequency=0.25)
    assert out.tolist() == [0.0, 0.0, -(0.5 + 3 * 0.25), -(0.5 + 0.25)]


def test_logit_bias_can_ban_a_token():
    out = apply_logit_bias(LOGITS, {1: -np.inf, 2: 1.0})
    assert out[1] == -np.inf and out[2] == pytest.approx(LOGITS[2] + 1.0)
    p = SamplingParams(temperature=0, logit_bias={1: -np.inf})
    assert sample(LOGITS, p, np.random.default_rng(0)) == 3          # the best left


def test_greedy_ignores_the_rng():
    assert all(sample(LOGITS, SamplingParams(temperature=0), np.random.default_rng(s)) == 1 for s in range(5))


def test_penalty_window_is_the_last_n_tokens():
    logits = np.array([1.0, 0.9, 0.0, 0.0], dtype=np.float32)
    p = SamplingParams(temperature=0, repeat_penalty=2.0, repeat_last_n=1)
    assert sample(logits, p, np.random.default_rng(0), recent=[1, 0]) == 1   # only token 0: 0.5 < 0.9
    p.repeat_last_n = 2
    assert sample(logits, p, np.random.default_rng(0), recent=[1, 0]) == 0   # both: 0.5 > 0.45


def test_draws_follow_the_distribution():
    """temperature 1 and no filters: frequencies over 20000 draws within 1.5% of p."""
    p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    rng = np.random.default_rng(1)
    counts = np.bincount([sample(LOGITS, p, rng) for _ in range(20000)], minlength=4) / 20000
    np.testing.assert_allclose(counts, PROBS, atol=0.015)


def test_temperature_sharpens_and_flattens():
    rng = np.random.default_rng(2)
    cold = SamplingParams(temperature=0.1, top_k=0, top_p=1.0, min_p=0.0)
    hot = SamplingParams(temperature=10.0, top_k=0, top_p=1.0, min_p=0.0)
    assert np.mean([sample(LOGITS, cold, rng) == 1 for _ in range(2000)]) > 0.99
    share = np.bincount([sample(LOGITS, hot, rng) for _ in range(8000)], minlength=4) / 8000
    assert share.min() > 0.15                                        # close to uniform


def test_same_seed_same_draws():
    p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = [sample(LOGITS, p, np.random.default_rng(42)) for _ in range(50)]
    b = [sample(LOGITS, p, np.random.default_rng(42)) for _ in range(50)]
    assert a == b


def test_candidates_without_top_k_equal_a_full_sort():
    """The growing partial sort used when top_k is off finds exactly the top-p set that a
    sort of the whole vocabulary finds."""
    rng = np.random.default_rng(3)
    for spread in (0.5, 3.0, 10.0):
        logits = (rng.standard_normal(50000) * spread).astype(np.float32)
        params = SamplingParams(top_k=0, top_p=0.9, min_p=0.0)
        ids, _ = candidates(logits, params)
        order = np.argsort(-logits, kind="stable")
        cum = np.cumsum(softmax(logits[order]))
        expect = order[:int(np.searchsorted(cum, 0.9)) + 1]
        assert set(ids.tolist()) == set(expect.tolist())


def test_log_softmax_normalizes():
    ls = log_softmax(LOGITS)
    np.testing.assert_allclose(np.exp(ls), PROBS, rtol=1e-6)
