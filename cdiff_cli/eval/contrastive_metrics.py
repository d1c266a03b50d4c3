"""Metrics of the contrastive-analysis protocol (the paper's Table 1): SSIM, MSE, k-NN and
probe accuracies. Pure numpy: arrays in, numbers out; nothing here imports from ``cdiff_cli``.

SSIM is the standard one (Wang et al. 2004): an 11-tap Gaussian window with sigma 1.5, the
constants C1 = (0.01 L)^2 and C2 = (0.03 L)^2 for data range L, population (biased) local
variances, and the mean of the SSIM map over the "valid" positions (where the whole window
fits; no padding). This is what ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
use_sample_covariance=False, data_range=L)`` and torchmetrics' SSIM compute. Colour images
(C, H, W) get the mean over channels.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike, NDArray

__all__ = ["gaussian_window", "ssim", "ssim_batch", "mse_batch", "knn_predict", "accuracy", "balanced_accuracy",
           "majority_chance"]


def gaussian_window(size: int = 11, sigma: float = 1.5) -> NDArray[np.float64]:
    """1-D Gaussian taps centred on the middle one, summing to 1.

    >>> w = gaussian_window(3, 1.0); bool(np.isclose(w.sum(), 1.0)), bool(w[0] == w[2] < w[1])
    (True, True)
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"window size must be odd and positive, got {size}")
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(a: NDArray[np.float64], g: NDArray[np.float64]) -> NDArray[np.float64]:
    """Separable window over the last two axes, valid positions only: (..., H, W) -> (..., H-k+1, W-k+1)."""
    k = len(g)
    a = sliding_window_view(a, k, axis=-1) @ g  # (..., H, W-k+1)
    return np.swapaxes(sliding_window_view(np.swapaxes(a, -1, -2), k, axis=-1) @ g, -1, -2)


def ssim_batch(x: ArrayLike, y: ArrayLike, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5,
               k1: float = 0.01, k2: float = 0.03) -> NDArray[np.float64]:
    """SSIM per image of two batches (N, C, H, W) (or (N, H, W)) -> (N,): mean over channels and
    valid positions. Images must be at least ``win_size`` pixels a side."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 3:
        a, b = a[:, None], b[:, None]
    if a.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) or (N, H, W), got shape {a.shape}")
    if min(a.shape[-2:]) < win_size:
        raise ValueError(f"images of {a.shape[-2]}x{a.shape[-1]} px are smaller than the {win_size}-px SSIM window")
    g = gaussian_window(win_size, sigma)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a**2
    var_b = _filter_valid(b * b, g) - mu_b**2
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(axis=(1, 2, 3))


def ssim(x: ArrayLike, y: ArrayLike, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5) -> float:
    """SSIM of two images (H, W) or (C, H, W).

    Two constant images a and b give (2ab + C1) / (a^2 + b^2 + C1):

    >>> round(ssim(np.full((11, 11), 0.5), np.full((11, 11), 0.25)), 6)
    0.800064
    """
    a = np.asarray(x, dtype=np.float64)
    if a.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (C, H, W), got shape {a.shape}")
    return float(ssim_batch(a[None], np.asarray(y, dtype=np.float64)[None], data_range, win_size, sigma)[0])


def mse_batch(x: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
    """Mean squared error per image of two batches (N, ...) -> (N,)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)


def knn_predict(train_z: ArrayLike, train_y: ArrayLike, query_z: ArrayLike, k: int = 3,
                leave_one_out: bool = False, chunk: int = 512) -> NDArray:
    """Majority label of the ``k`` nearest training vectors by cosine similarity.

    Ties between labels go to the label of the nearest neighbour among the tied ones.
    ``leave_one_out``: the query set IS the training set, and each vector skips itself.

    >>> knn_predict([[1, 0], [0.9, 0.1], [0, 1]], ["a", "a", "b"], [[1, 0.05], [0.1, 1]], k=1).tolist()
    ['a', 'b']
    """
    tz, qz = _unit(train_z), _unit(query_z)
    ty = np.asarray(train_y)
    if len(tz) != len(ty):
        raise ValueError(f"{len(tz)} training vectors but {len(ty)} labels")
    if leave_one_out and len(tz) != len(qz):
        raise ValueError("leave_one_out needs the query set to be the training set")
    k = min(k, len(tz) - (1 if leave_one_out else 0))
    if k < 1:
        raise ValueError("k-NN needs at least one training vector besides the query")
    out = []
    for start in range(0, len(qz), chunk):
        sims = qz[start : start + chunk] @ tz.T  # (q, n)
        if leave_one_out:
            rows = np.arange(sims.shape[0])
            sims[rows, rows + start] = -np.inf
        nearest = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # (q, k), nearest first
        for labels in ty[nearest]:
            values, first, counts = np.unique(labels, return_index=True, return_counts=True)
            best = np.flatnonzero(counts == counts.max())
            out.append(values[best[np.argmin(first[best])]])
    return np.asarray(out, dtype=ty.dtype)


def _unit(z: ArrayLike) -> NDArray[np.float64]:
    a = np.asarray(z, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected (N, D) vectors, got shape {a.shape}")
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Share of equal labels (NaN for no labels)."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(t == p)) if t.size else float("nan")


def balanced_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean over the true classes of their recall: 0.5 for any constant guess on two classes.

    >>> balanced_accuracy([0, 0, 0, 1], [0, 0, 0, 0])
    0.5
    """
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if not t.size:
        return float("nan")
    return float(np.mean([np.mean(p[t == c] == c) for c in np.unique(t)]))


def majority_chance(y_train: ArrayLike, y_test: ArrayLike) -> float:
    """Accuracy on ``y_test`` of always answering the most frequent class of ``y_train``.

    >>> majority_chance([0, 0, 1], [0, 1, 1, 1])
    0.25
    """
    tr, te = np.asarray(y_train), np.asarray(y_test)
    if not tr.size or not te.size:
        return float("nan")
    values, counts = np.unique(tr, return_counts=True)
    return float(np.mean(te == values[np.argmax(counts)]))
