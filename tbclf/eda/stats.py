"""Numbers behind the EDA: per-image intensity and contrast, running mean/std images, PCA.

Everything works on uint8 images already reduced to the EDA size, so memory stays bounded
whatever the originals' resolution (running sums, never a stack of all images).
"""

from __future__ import annotations

import numpy as np

# Robust percentiles for Michelson contrast: a single burned-in white letter or a black
# corner would otherwise make (max - min) / (max + min) close to 1 for every image.
MICHELSON_PERCENTILES = (1.0, 99.0)
IMAGE_METRICS = ("mean", "std", "rms_contrast", "michelson_contrast")
METRIC_LABELS = {
    "mean": "Mean intensity (0-255)",
    "std": "Std of intensity (0-255)",
    "rms_contrast": "RMS contrast (std of I/255)",
    "michelson_contrast": "Michelson contrast (p99-p1)/(p99+p1)",
}


def histogram(img: np.ndarray) -> np.ndarray:
    """256-bin counts of a uint8 image."""
    if img.dtype != np.uint8:
        raise TypeError(f"expected uint8, got {img.dtype}")
    return np.bincount(img.ravel(), minlength=256).astype(np.int64)


def _percentile_from_hist(cum: np.ndarray, total: int, q: float) -> float:
    """Lowest gray level whose cumulative count reaches q percent ("lower" percentile)."""
    rank = max(int(np.ceil(q / 100.0 * total)), 1)
    return float(np.searchsorted(cum, rank))


def intensity_stats(img: np.ndarray) -> dict[str, float]:
    """Mean, std, RMS and Michelson contrast of a uint8 image.

    RMS contrast is the standard deviation of the intensities scaled to [0, 1] by the 8-bit
    range (I / 255), i.e. std / 255. Michelson contrast is (Imax - Imin) / (Imax + Imin) with
    Imax / Imin the 99th / 1st intensity percentiles (MICHELSON_PERCENTILES) for robustness to
    markers and borders; it is 0 for a constant image, including an all-black one.
    """
    h = histogram(img)
    total = int(h.sum())
    if total == 0:
        raise ValueError("empty image")
    levels = np.arange(256, dtype=np.float64)
    mean = float(h @ levels / total)
    var = float(h @ (levels - mean) ** 2 / total)
    std = float(np.sqrt(max(var, 0.0)))
    cum = np.cumsum(h)
    lo = _percentile_from_hist(cum, total, MICHELSON_PERCENTILES[0])
    hi = _percentile_from_hist(cum, total, MICHELSON_PERCENTILES[1])
    michelson = (hi - lo) / (hi + lo) if hi + lo > 0 else 0.0
    return {
        "mean": mean,
        "std": std,
        "rms_contrast": std / 255.0,
        "michelson_contrast": float(michelson),
    }


def summarize(values: list[float] | np.ndarray) -> dict[str, float | int | None]:
    """Distribution summary used in stats.json (None fields when there are no values)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {
            "n": 0,
            "mean": None,
            "std": None,
            "min": None,
            "p25": None,
            "median": None,
            "p75": None,
            "max": None,
        }
    p25, med, p75 = np.percentile(v, [25, 50, 75])
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(v.min()),
        "p25": float(p25),
        "median": float(med),
        "p75": float(p75),
        "max": float(v.max()),
    }


class RunningImageMoments:
    """Pixel-wise mean and standard deviation of equally sized images, one at a time.

    Sums are float64: with values <= 255 and up to millions of images the sum-of-squares form
    loses nothing that matters at 8-bit precision.
    """

    def __init__(self, shape: tuple[int, int]) -> None:
        self.n = 0
        self._sum = np.zeros(shape, dtype=np.float64)
        self._sumsq = np.zeros(shape, dtype=np.float64)
        self.hist = np.zeros(256, dtype=np.int64)

    def add(self, img: np.ndarray) -> None:
        if img.shape != self._sum.shape:
            raise ValueError(f"image shape {img.shape} != {self._sum.shape}")
        f = img.astype(np.float64)
        self._sum += f
        self._sumsq += f * f
        self.hist += histogram(img)
        self.n += 1

    def add_histogram(self, hist: np.ndarray) -> None:
        self.hist += hist

    @property
    def mean(self) -> np.ndarray:
        return self._sum / max(self.n, 1)

    @property
    def std(self) -> np.ndarray:
        m = self.mean
        return np.sqrt(np.maximum(self._sumsq / max(self.n, 1) - m * m, 0.0))


def pca(images: np.ndarray, n_components: int) -> dict[str, np.ndarray]:
    """Eigen-images of a stack (n, h, w) via SVD of the centred data matrix.

    Returns mean (h, w), components (k, h, w) with unit norm, explained_variance_ratio (k,)
    (fraction of the total pixel variance), and singular values. Signs are arbitrary (SVD),
    so each component is flipped to make its largest-magnitude pixel positive for stable plots.
    """
    n, h, w = images.shape
    x = images.reshape(n, h * w).astype(np.float64)
    mean = x.mean(axis=0)
    xc = x - mean
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    total = float(np.sum(s**2))
    k = max(0, min(n_components, vt.shape[0], n - 1))
    comps = vt[:k]
    signs = np.sign(comps[np.arange(k), np.argmax(np.abs(comps), axis=1)]) if k else np.ones(0)
    comps = comps * signs[:, None]
    ratio = (s[:k] ** 2) / total if total > 0 else np.zeros(k)
    return {
        "mean": mean.reshape(h, w),
        "components": comps.reshape(k, h, w),
        "explained_variance_ratio": ratio,
        "singular_values": s[:k],
    }
