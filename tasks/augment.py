"""On-the-fly augmentation of training windows (never validation or test).

Each window of a batch is augmented with probability ``rate``; an augmented
window x (l, f), in scaled units, gets in turn

1. magnitude warping (Um et al. 2017, "Data augmentation of wearable sensor
   data", ICMI): x * c, where each feature's curve c (l,) is the natural cubic
   spline through ``warp_knots`` values drawn from N(1, warp_std²) at evenly
   spaced times, so it varies slowly and has mean 1;
2. Gaussian noise: + N(0, noise_std²) on every value;
3. feature dropout: each feature is set to 0 (its training mean) over the
   whole window with probability ``dropout_p``.

Targets are never touched. Randomness comes only from the ``torch.Generator``
passed in, so a seed replays the same augmentations; a strength of 0 skips
its step, so ``rate = 0`` or all strengths 0 returns the input values exactly.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from configs.schema import AugmentConfig


@lru_cache(maxsize=32)
def spline_weights(length: int, knots: int) -> np.ndarray:
    """W (length, knots): W @ v is the natural cubic spline through values v at
    times 0, (length-1)/(knots-1), ..., length-1, sampled at 0..length-1.

    Interpolation is linear in v, so the spline of each unit vector gives one
    column. Rows sum to 1 (a constant is its own spline).
    """
    if knots < 2:
        raise ValueError(f"warp_knots must be >= 2, got {knots}")
    h = (length - 1) / (knots - 1) if length > 1 else 1.0  # knot spacing
    values = np.eye(knots)  # (k, k): column j is unit vector e_j
    # Second derivatives M at the knots: M_0 = M_{k-1} = 0 (natural), and
    # M_{i-1} + 4 M_i + M_{i+1} = 6 (v_{i-1} - 2 v_i + v_{i+1}) / h² inside.
    m = np.zeros((knots, knots))
    if knots > 2:
        inner = knots - 2
        a = 4.0 * np.eye(inner) + np.eye(inner, k=1) + np.eye(inner, k=-1)
        rhs = 6.0 * (values[:-2] - 2.0 * values[1:-1] + values[2:]) / h**2  # (k-2, k)
        m[1:-1] = np.linalg.solve(a, rhs)
    t = np.arange(length, dtype=np.float64)
    i = np.minimum((t / h).astype(int), knots - 2)  # segment of each time step
    left, right = t - i * h, (i + 1) * h - t
    w = (m[i] * right[:, None] ** 3 + m[i + 1] * left[:, None] ** 3) / (6.0 * h) \
        + (values[i] / h - m[i] * h / 6.0) * right[:, None] \
        + (values[i + 1] / h - m[i + 1] * h / 6.0) * left[:, None]
    w.setflags(write=False)
    return w  # (l, k)


def warp_curves(b: int, length: int, f: int, cfg: AugmentConfig, generator: torch.Generator,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Smooth multiplicative curves (b, l, f) with mean 1 and std ~ warp_std."""
    knots = 1.0 + cfg.warp_std * torch.randn(b, cfg.warp_knots, f, generator=generator,
                                              dtype=torch.float64)  # (b, k, f)
    w = torch.tensor(spline_weights(length, cfg.warp_knots))  # (l, k), a copy
    return torch.einsum("lk,bkf->blf", w, knots).to(dtype)  # (b, l, f)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """A new tensor (b, l, f): x with a share ``cfg.rate`` of its windows augmented.

    x and the generator are on the CPU: augmentation runs in the collate
    function, before Lightning moves the batch to the accelerator.
    """
    if cfg.rate == 0 or (cfg.noise_std == 0 and cfg.warp_std == 0 and cfg.dropout_p == 0):
        return x.clone()
    b, length, f = x.shape
    # Draws are made for every window, chosen or not, so one window's noise
    # does not depend on which others were chosen.
    chosen = torch.rand(b, generator=generator) < cfg.rate  # (b,)
    aug = x
    if cfg.warp_std > 0:
        aug = aug * warp_curves(b, length, f, cfg, generator, dtype=x.dtype)  # (b, l, f)
    if cfg.noise_std > 0:
        aug = aug + cfg.noise_std * torch.randn(b, length, f, generator=generator, dtype=x.dtype)  # (b, l, f)
    if cfg.dropout_p > 0:
        keep = torch.rand(b, 1, f, generator=generator) >= cfg.dropout_p  # (b, 1, f)
        aug = torch.where(keep, aug, torch.zeros((), dtype=x.dtype))
    return torch.where(chosen[:, None, None], aug, x)  # (b, l, f), a new tensor


class AugmentCollate:
    """``DataLoader(collate_fn=AugmentCollate(cfg, seed))`` for training loaders only.

    Stacks ``(x, y)`` samples into ``(x (b, l, f), y (b, h))`` and augments x.
    The generator starts from ``seed`` and runs on across batches and epochs;
    ``set_epoch(e)`` restarts it from (seed, e), so a resumed run can replay an
    epoch's augmentations. One stream for the loader: training loads in the
    main process (``num_workers=0``), where batches are collated in order.
    """

    def __init__(self, cfg: AugmentConfig, seed: int) -> None:
        self.cfg = cfg
        self.seed = int(seed)
        self._gen = torch.Generator().manual_seed(self.seed % 2**63)

    def set_epoch(self, epoch: int) -> None:
        key = np.random.SeedSequence([self.seed % 2**63, int(epoch)]).generate_state(1, dtype=np.uint64)[0]
        self._gen = torch.Generator().manual_seed(int(key) % 2**63)

    def __call__(self, batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([torch.as_tensor(s[0]) for s in batch])  # (b, l, f)
        y = torch.stack([torch.as_tensor(s[1]) for s in batch])  # (b, h)
        return augment_batch(x, self.cfg, self._gen), y
