"""Sample quality on digits, computed offline: the Frechet distance between feature statistics of
generated and real digits under a small classifier trained on scikit-learn's bundled digits.

This is FID (Heusel et al. 2017) with Inception replaced by a one-hidden-layer MLP trained in
about a second on 8x8 digits: the features are its hidden layer (64 ReLU units), each set of
images is summarised by the mean and covariance of its features, and the distance between the
two Gaussians is

    FD = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)).

Absolute values are not comparable with published FIDs (another network, another feature
space, 8x8 images). They are comparable with each other for one image size and sample count,
and with the floor beside them: the distance of as many real held-out digits, which is not 0
because a finite sample's mean and covariance are noisy (FD is biased upwards at small N).

The 1,797 digits are split once by a seeded permutation: 40% train the classifier, 40% are the
reference the samples are compared with, 20% give the real-digit floor. Every image set, real or
generated, takes the same path to the classifier: grey, resized to 8x8 with antialiasing."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

DIGIT_SIDE = 8
HIDDEN_UNITS = 64
SPLIT = (0.4, 0.4)  # classifier, reference; the rest is the real-digit floor


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """The Frechet (2-Wasserstein) distance squared between N(mu1, sigma1) and N(mu2, sigma2).

    Tr (S1 S2)^(1/2) is computed as Tr (S1^(1/2) S2 S1^(1/2))^(1/2): the two matrices are similar,
    and the second is symmetric positive semi-definite, so eigh gives it exactly, with no complex
    round-off as a general matrix square root of the non-symmetric S1 S2 would."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1 = np.atleast_2d(sigma1).astype(np.float64)
    sigma2 = np.atleast_2d(sigma2).astype(np.float64)
    if (
        mu1.shape != mu2.shape
        or sigma1.shape != sigma2.shape
        or sigma1.shape != (mu1.size, mu1.size)
    ):
        raise ValueError(
            f"mismatched statistics: means {mu1.shape} and {mu2.shape}, "
            f"covariances {sigma1.shape} and {sigma2.shape}."
        )
    root1 = _psd_sqrt(sigma1)
    cross = np.linalg.eigvalsh(root1 @ sigma2 @ root1).clip(min=0)
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(cross).sum()
    return float(max(value, 0.0))  # rounding can leave -1e-12 where the answer is 0


def gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of the rows of a (N, D) feature array, N >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need a (N, D) feature array with N >= 2, got shape {features.shape}.")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_between(features1: np.ndarray, features2: np.ndarray) -> float:
    return frechet_distance(*gaussian(features1), *gaussian(features2))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(values.clip(min=0))) @ vectors.T


def to_digit_inputs(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) images in [-1, 1] -> (N, 64) grey 8x8 pixels in [-1, 1], the classifier's input.

    Channels are averaged (digits stored as three equal channels stay as they are), values outside
    the data range are clamped (a sampler can overshoot), and the resize to 8x8 antialiases."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}.")
    x = images.detach().float().cpu().clamp(-1, 1).mean(dim=1, keepdim=True)
    if x.shape[-2:] != (DIGIT_SIDE, DIGIT_SIDE):
        x = F.interpolate(
            x, size=(DIGIT_SIDE, DIGIT_SIDE), mode="bilinear", align_corners=False, antialias=True
        )
    return x.flatten(1).numpy().astype(np.float64)


def digit_images(image_size: int, channels: int) -> tuple[torch.Tensor, np.ndarray]:
    """All 1,797 bundled digits as ddpm.data prepares them for training at this size and channel
    count (so the reference looks like what the model learned from), in scikit-learn's order,
    with their labels."""
    from sklearn.datasets import load_digits

    from ddpm.data import load_dataset

    data = load_dataset("digits", image_size, channels)
    n = len(data) + data.val_images.shape[0]
    images = torch.empty(n, channels, image_size, image_size)
    images[data.train_indices] = data.train_images
    images[data.val_indices] = data.val_images
    return images, load_digits().target


@dataclass
class DigitsJudge:
    """A trained feature network and the real-digit statistics samples are compared with."""

    weights: np.ndarray  # (64, HIDDEN_UNITS): the MLP's first layer
    bias: np.ndarray
    accuracy: float  # of the classifier on the reference digits: features that mean something
    reference: tuple[np.ndarray, np.ndarray]  # mean and covariance of the reference features
    floor_inputs: np.ndarray  # real held-out digits for the floor, as classifier inputs

    @classmethod
    def build(cls, image_size: int, channels: int, seed: int = 0) -> DigitsJudge:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        images, labels = digit_images(image_size, channels)
        inputs = to_digit_inputs(images)
        order = np.random.default_rng(seed).permutation(len(inputs))
        n_clf, n_ref = (round(f * len(inputs)) for f in SPLIT)
        clf_idx, ref_idx = order[:n_clf], order[n_clf : n_clf + n_ref]
        floor_idx = order[n_clf + n_ref :]
        classifier = MLPClassifier(
            hidden_layer_sizes=(HIDDEN_UNITS,), alpha=1e-3, max_iter=300, random_state=seed
        )
        with warnings.catch_warnings():
            # Stopping at max_iter is deliberate: a fixed budget keeps the features reproducible.
            warnings.simplefilter("ignore", ConvergenceWarning)
            classifier.fit(inputs[clf_idx], labels[clf_idx])
        judge = cls(
            weights=classifier.coefs_[0],
            bias=classifier.intercepts_[0],
            accuracy=float(classifier.score(inputs[ref_idx], labels[ref_idx])),
            reference=(np.zeros(0), np.zeros((0, 0))),
            floor_inputs=inputs[floor_idx],
        )
        judge.reference = gaussian(judge.features(inputs[ref_idx]))
        return judge

    def features(self, inputs: np.ndarray) -> np.ndarray:
        """The hidden layer: ReLU(x W + b), as the classifier computes it."""
        return np.maximum(inputs @ self.weights + self.bias, 0.0)

    def score(self, images: torch.Tensor) -> float:
        """Frechet distance of these images' features from the reference digits' features."""
        return frechet_distance(*gaussian(self.features(to_digit_inputs(images))), *self.reference)

    def floor(self, count: int) -> float:
        """The same distance for `count` real held-out digits (at most the floor split's size):
        what a perfect sampler would score with that many images."""
        inputs = self.floor_inputs[: max(2, count)]
        return frechet_distance(*gaussian(self.features(inputs)), *self.reference)
