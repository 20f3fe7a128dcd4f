"""Augmentation: determinism, identity when off, measured strengths, y untouched."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from configs.schema import AugmentConfig
from tasks.augment import AugmentCollate, augment_batch, spline_weights, warp_curves


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def loader_batches(collate, n=64, batch_size=16):
    x = torch.randn(n, 20, 4, generator=gen(99))
    y = torch.randn(n, 3, generator=gen(98))
    dl = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False, collate_fn=collate)
    return x, y, list(dl)


FULL = AugmentConfig(rate=0.5, noise_std=0.1, warp_std=0.2, warp_knots=4, dropout_p=0.2)


def test_same_seed_same_batches_in_the_same_order():
    _, _, a = loader_batches(AugmentCollate(FULL, seed=7))
    _, _, b = loader_batches(AugmentCollate(FULL, seed=7))
    _, _, c = loader_batches(AugmentCollate(FULL, seed=8))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))


def test_set_epoch_replays_an_epoch():
    col = AugmentCollate(FULL, seed=3)
    col.set_epoch(4)
    _, _, first = loader_batches(col)
    _, _, other = loader_batches(col)  # the stream went on
    col.set_epoch(4)
    _, _, again = loader_batches(col)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(first, again))
    assert not torch.equal(first[0][0], other[0][0])
    col.set_epoch(5)  # another epoch, another stream; not the seed's own either
    _, _, fifth = loader_batches(col)
    _, _, fresh = loader_batches(AugmentCollate(FULL, seed=3))
    assert not torch.equal(fifth[0][0], first[0][0]) and not torch.equal(fifth[0][0], fresh[0][0])
    assert not torch.equal(first[0][0], fresh[0][0])


@pytest.mark.parametrize("cfg", [
    AugmentConfig(rate=0.0, noise_std=0.5, warp_std=0.5, dropout_p=0.5),
    AugmentConfig(rate=1.0, noise_std=0.0, warp_std=0.0, dropout_p=0.0),
])
def test_off_is_plain_stacking(cfg):
    x, y, batches = loader_batches(AugmentCollate(cfg, seed=1))
    got_x = torch.cat([b[0] for b in batches])
    got_y = torch.cat([b[1] for b in batches])
    assert torch.equal(got_x, x) and torch.equal(got_y, y)


def test_y_is_never_changed_and_input_not_mutated():
    x, y, batches = loader_batches(AugmentCollate(AugmentConfig(rate=1.0, noise_std=1.0, warp_std=0.5,
                                                                dropout_p=0.5), seed=2))
    assert torch.equal(torch.cat([b[1] for b in batches]), y)
    assert not torch.equal(torch.cat([b[0] for b in batches]), x)
    before = x.clone()
    out = augment_batch(x, FULL, gen())
    assert torch.equal(x, before) and out.data_ptr() != x.data_ptr()


def test_noise_std_is_measured():
    cfg = AugmentConfig(rate=1.0, noise_std=0.3)
    out = augment_batch(torch.zeros(2048, 32, 4), cfg, gen(5))
    # 262144 draws: the sample std is within ~0.5% of 0.3 (5 sigma ~ 0.7%).
    assert float(out.std()) == pytest.approx(0.3, rel=0.01)
    assert abs(float(out.mean())) < 5 * 0.3 / math.sqrt(out.numel())


def test_rate_is_the_share_of_windows_changed():
    cfg = AugmentConfig(rate=0.3, noise_std=0.1)
    b = 4000
    out = augment_batch(torch.zeros(b, 8, 2), cfg, gen(6))
    share = float((out != 0).any(dim=(1, 2)).float().mean())
    assert abs(share - 0.3) < 5 * math.sqrt(0.3 * 0.7 / b)


def test_dropout_zeroes_whole_features_at_the_expected_rate():
    p, b, length, f = 0.2, 3000, 16, 5
    cfg = AugmentConfig(rate=1.0, dropout_p=p)
    out = augment_batch(torch.ones(b, length, f), cfg, gen(7))
    zero = out == 0  # (b, l, f)
    whole = zero.all(dim=1)  # (b, f): a feature zeroed over the whole window
    assert torch.equal(zero.any(dim=1), whole)  # never part of a window
    assert bool(((out == 1) | zero).all())  # the others untouched
    n = b * f
    assert abs(float(whole.float().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_warp_curves_are_smooth_with_mean_one():
    cfg = AugmentConfig(rate=1.0, warp_std=0.2, warp_knots=4)
    b, length, f = 2000, 60, 3
    curves = warp_curves(b, length, f, cfg, gen(8)).double()  # (b, l, f)
    # Mean 1 at every time step (within 5 standard errors).
    mean_t = curves.mean(dim=(0, 2))  # (l,)
    assert float((mean_t - 1).abs().max()) < 5 * 0.2 / math.sqrt(b * f)
    # At the knots (t = 0, l-1) the spread is the knots' std.
    assert float(curves[:, 0].std()) == pytest.approx(0.2, rel=0.05)
    assert float(curves[:, -1].std()) == pytest.approx(0.2, rel=0.05)
    # Smooth: steps are a small fraction of the spread, and the slope changes
    # far less than white noise's would (whose mean |2nd difference| is ~0.45).
    d1 = curves.diff(dim=1).abs()
    d2 = curves.diff(n=2, dim=1).abs()
    assert float(d1.max()) < 0.2 and float(d2.mean()) < 0.01 * 0.2 * 2.26
    # A warped window is the window times its curve (drawn after the choice of windows).
    x = torch.full((16, length, f), 2.0)
    out = augment_batch(x, cfg, gen(9))
    g = gen(9)
    torch.rand(16, generator=g)
    assert torch.equal(out, x * warp_curves(16, length, f, cfg, g))


def test_spline_weights_interpolate_the_knots():
    w = spline_weights(31, 4)  # knots at t = 0, 10, 20, 30
    np.testing.assert_allclose(w[[0, 10, 20, 30]], np.eye(4), atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    # A straight line through the knots is reproduced (natural spline, no wiggle).
    line = np.array([1.0, 1.2, 1.4, 1.6])
    np.testing.assert_allclose(w @ line, 1.0 + 0.02 * np.arange(31), atol=1e-12)
    np.testing.assert_allclose(spline_weights(11, 2) @ np.array([0.0, 1.0]), np.linspace(0, 1, 11), atol=1e-12)
