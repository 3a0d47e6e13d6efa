"""Interleaved verdicts (gputuned/tuners/confirm.py): drift cancels, noise averages down."""

from __future__ import annotations

import math
import random

import pytest

from gputuned.tuners.confirm import NOISE_SAMPLES, Interleaving, NoiseEstimate

BAR = math.log1p(0.03)


def pair_noise(spread: float) -> float:
    """What NoiseEstimate would say of windows each off by up to +-spread (uniformly)."""
    rng, estimate = random.Random(0), NoiseEstimate()
    for _ in range(NOISE_SAMPLES):
        estimate.add(1 + rng.uniform(-spread, spread), 1 + rng.uniform(-spread, spread))
    return estimate.value(0.0, 1.0)


def interleave(true_gain: float, spread: float, seed: int, drift: float = 0.0, budget: int = 8) -> tuple[bool, int]:
    """Runs one interleaving against a simulated pair of settings: (kept, windows used)."""
    rng = random.Random(seed)
    at = iter(range(1000))

    def window(new: bool) -> float:
        level = 100 * (1 + drift * next(at))
        return level * (1 + true_gain if new else 1) * (1 + rng.uniform(-spread, spread))

    noise = pair_noise(spread) if spread else 0.0
    interleaving = Interleaving(BAR, noise, budget, "goodput", [(False, window(False)), (True, window(True))])
    while (verdict := interleaving.verdict()) is None:
        interleaving.add(interleaving.next_is_new, window(interleaving.next_is_new))
    return verdict, len(interleaving.windows)


def single_window_keeps(true_gain: float, spread: float, seed: int) -> bool:
    """The verdict of one baseline window against one trial window, at the same bar."""
    rng = random.Random(seed)
    before, after = 1 + rng.uniform(-spread, spread), (1 + true_gain) * (1 + rng.uniform(-spread, spread))
    return math.log(after / before) > BAR


def test_a_steady_drift_cancels_between_the_two_orders():
    # +5% per window, no noise: old->new pairs read +5%, new->old ones -5%; no real gain.
    kept, _ = interleave(0.0, 0.0, seed=1, drift=0.05)
    assert not kept
    interleaving = Interleaving(BAR, 0.05, 8, "goodput", [(False, 100.0), (True, 105.0), (False, 110.0), (True, 115.5)])
    assert interleaving.gain() == pytest.approx(math.log(1.05 * 1.05 / 1.1 * 1.0), abs=0.02)


def test_a_real_gain_is_kept_and_a_real_loss_is_not_where_one_window_pair_decides_on_luck():
    spread, runs = 0.12, 400  # each window off by up to +-12%, as on the build machine
    kept_gain = sum(interleave(0.10, spread, seed)[0] for seed in range(runs))
    kept_loss = sum(interleave(-0.05, spread, seed)[0] for seed in range(runs))
    single_loss = sum(single_window_keeps(-0.05, spread, seed) for seed in range(runs))
    assert kept_gain >= 0.85 * runs, kept_gain
    assert kept_loss <= 0.12 * runs and kept_loss <= single_loss / 2, (kept_loss, single_loss)


def test_a_clear_verdict_stops_early_and_a_plateau_takes_more_windows_up_to_the_budget():
    assert all(interleave(0.5, 0.05, seed)[1] == 3 for seed in range(20))  # two pairs are enough
    at_the_bar = [interleave(0.03, 0.10, seed)[1] for seed in range(20)]  # as much evidence for as against
    assert sum(at_the_bar) / len(at_the_bar) > 4 and max(at_the_bar) == 8


def test_windows_must_alternate():
    interleaving = Interleaving(BAR, 0.05, 8, "goodput", [(False, 1.0), (True, 1.0)])
    with pytest.raises(ValueError, match="alternate"):
        interleaving.add(True, 1.0)
    assert interleaving.last(False) == 1.0 and interleaving.next_is_new is False


def test_the_noise_estimate_is_the_median_of_recent_pairs_within_its_bounds():
    noise = NoiseEstimate()
    assert noise.value(0.03, 0.10) == 0.03  # nothing known yet: the floor
    for a, b in [(100, 104), (100, 110), (100, 106)]:
        noise.add(a, b)
    assert noise.value(0.03, 0.10) == pytest.approx(2 * 6 / 206)
    for _ in range(3):
        noise.add(100, 200)
    assert noise.value(0.03, 0.10) == 0.10  # the median of six, three of them 67%
