"""2-D pictures of what a metric learned: support and query embeddings of a few episodes.

For each of the first few tasks of an :class:`~metakit.tasks.EpisodeBatch`,
:func:`project_episodes` embeds the support and query images with the algorithm's embedding
network (in ``eval()`` mode, without autograd) and projects them *together* to two dimensions:

* ``method="pca"``: principal component analysis, ``Y = (Z - mean(Z)) V[:, :2]`` with ``V``
  the right singular vectors of the centred embeddings (``torch.linalg.svd``); the panel title
  gives the fraction of the variance the two components keep. PCA is linear, so class means
  (ProtoNet's prototypes) project to the means of the projected points, and straight-line
  distances are shrunk, never stretched.
* ``method="tsne"``: exact t-SNE (van der Maaten & Hinton 2008) for the few hundred points of
  an episode: Gaussian affinities with a per-point bandwidth found by bisection to match the
  ``perplexity``, a Student-t kernel in 2-D, gradient descent on the KL divergence with early
  exaggeration (12 for the first quarter of the steps), momentum (0.5, then 0.8) and step
  size ``max(N / 4, 5)``. It keeps
  neighbourhoods, not distances; its initialisation comes from a private generator seeded
  with ``seed``.

Each episode is projected on its own (its classes are its own). :func:`plot_embeddings` draws
one panel per episode, coloured by class, with support examples as large stars (edged in
black) and queries as small dots drawn on top, and writes a PNG.

The embedding network is found by :func:`embedding_function`: the algorithm's ``embed(x)``
method (every metric method of metakit has one; Matching Networks' is the encoder before the
full-context embeddings), else its ``encoder`` module.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from ..tasks.episode import EpisodeBatch
from .plots import save_figure

__all__ = [
    "EpisodeProjection",
    "embedding_function",
    "pca_2d",
    "tsne_2d",
    "project_episodes",
    "plot_embeddings",
    "plot_run_embeddings",
    "EMBEDDINGS_PNG",
]

#: file name of the embedding figure written into the run folder
EMBEDDINGS_PNG = "embeddings.png"

_METHODS = ("pca", "tsne")


def embedding_function(algorithm: nn.Module) -> Callable[[Tensor], Tensor]:
    """The network that maps inputs ``[N, *x_shape]`` to embeddings ``[N, D]`` (flattened).

    Uses ``algorithm.embed`` if it has one, else ``algorithm.encoder``. Raises TypeError for
    algorithms without either (e.g. MAML-family classifiers, whose output is class logits).
    """
    embed = getattr(algorithm, "embed", None)
    if callable(embed):
        return lambda x: embed(x).flatten(1)
    encoder = getattr(algorithm, "encoder", None)
    if isinstance(encoder, nn.Module):
        return lambda x: encoder(x).flatten(1)
    raise TypeError(
        f"{type(algorithm).__name__} has no embed() method or encoder module, so it has no embedding to plot; "
        "embedding plots are for metric-based algorithms (protonet, matching, relation, siamese, nearest, baseline)"
    )


def _check_points(points: Tensor, need: int) -> Tensor:
    if not isinstance(points, Tensor) or points.dim() != 2:
        raise ValueError(
            f"points must be a 2-D tensor [N, D], got "
            f"{tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__}"
        )
    if points.shape[0] < need:
        raise ValueError(f"points has {points.shape[0]} rows; a 2-D projection needs at least {need} points")
    return points.detach().to(torch.float64)


def pca_2d(points: Tensor) -> tuple[Tensor, float]:
    """Project ``points [N, D]`` onto their first two principal components.

    Returns the coordinates ``[N, 2]`` (float64; a single-feature input gets a zero second
    coordinate) and the fraction of the total variance they keep (1.0 when all points coincide).
    The sign of each axis is fixed so that the largest-magnitude loading is positive.
    """
    z = _check_points(points, 2)
    centred = z - z.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(2, vh.shape[0])
    v = vh[:k].T  # [D, k]
    pivot = v[v.abs().argmax(0), torch.arange(k)]  # largest-magnitude loading of each axis
    v = v * torch.where(pivot < 0, -1.0, 1.0).to(v.dtype)
    coords = centred @ v
    if k < 2:
        coords = torch.cat([coords, torch.zeros(coords.shape[0], 2 - k, dtype=coords.dtype)], 1)
    total = float(s.pow(2).sum())
    kept = float(s[:k].pow(2).sum()) / total if total > 0 else 1.0
    return coords, kept


def _affinities(sq_dist: Tensor, perplexity: float, iterations: int = 64) -> Tensor:
    """Symmetric t-SNE input affinities ``P`` from squared distances ``[N, N]``."""
    n = sq_dist.shape[0]
    target = math.log(perplexity)
    eye = torch.eye(n, dtype=torch.bool)
    d = sq_dist / sq_dist[~eye].mean().clamp_min(1e-12)  # scale-free bisection range
    lo = torch.full((n, 1), -30.0, dtype=d.dtype)  # log precision bounds
    hi = torch.full((n, 1), 30.0, dtype=d.dtype)
    for _ in range(iterations):
        log_beta = (lo + hi) / 2
        logits = (-d * log_beta.exp()).masked_fill(eye, float("-inf"))
        p = torch.softmax(logits, 1)
        entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(1, keepdim=True)
        too_flat = entropy > target  # too wide a kernel: raise the precision
        lo = torch.where(too_flat, log_beta, lo)
        hi = torch.where(too_flat, hi, log_beta)
    p = torch.softmax((-d * ((lo + hi) / 2).exp()).masked_fill(eye, float("-inf")), 1)
    return ((p + p.T) / (2 * n)).clamp_min(1e-12).masked_fill(eye, 0.0)


def tsne_2d(points: Tensor, perplexity: float = 30.0, steps: int = 750, seed: int = 0) -> Tensor:
    """Exact t-SNE of ``points [N, D]`` to ``[N, 2]`` (float64); see the module docstring.

    ``perplexity`` is lowered to ``(N - 1) / 3`` for small ``N``. Cost ``O(steps * N^2)``:
    meant for one episode's few hundred points.
    """
    z = _check_points(points, 3)
    if isinstance(perplexity, bool) or not isinstance(perplexity, (int, float)) or not perplexity > 1:
        raise ValueError(f"perplexity={perplexity!r} must be a number > 1")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive int")
    n = z.shape[0]
    perplexity = min(float(perplexity), (n - 1) / 3)
    p = _affinities(torch.cdist(z, z).pow(2), max(perplexity, 1.01))
    gen = torch.Generator().manual_seed(seed)
    y = 1e-4 * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    velocity = torch.zeros_like(y)
    lr = max(n / 4, 5.0)  # plain momentum (no per-coordinate gains): a step size growing with N
    exaggerate_until = steps // 4
    for step in range(steps):
        num = 1.0 / (1.0 + torch.cdist(y, y).pow(2))
        num.fill_diagonal_(0.0)
        q = (num / num.sum()).clamp_min(1e-12)
        pe = p * (12.0 if step < exaggerate_until else 1.0)
        w = (pe - q) * num  # [N, N]
        grad = 4.0 * (w.sum(1, keepdim=True) * y - w @ y)
        momentum = 0.5 if step < exaggerate_until else 0.8
        velocity = momentum * velocity - lr * grad
        y = y + velocity
        y = y - y.mean(0)
    return y


@dataclass(frozen=True)
class EpisodeProjection:
    """2-D coordinates of one episode's embeddings.

    Attributes:
        support: ``[S, 2]`` coordinates of the support examples.
        query: ``[Q, 2]`` coordinates of the queries.
        support_y: ``[S]`` labels; query_y: ``[Q]`` labels.
        ways: classes in the episode.
        method: ``"pca"`` or ``"tsne"``.
        explained: fraction of the variance kept (PCA), ``None`` for t-SNE.
        classes: ``[ways]`` dataset class indices, when the batch has them.
    """

    support: Tensor
    query: Tensor
    support_y: Tensor
    query_y: Tensor
    ways: int
    method: str
    explained: float | None
    classes: Tensor | None = None


def project_episodes(
    algorithm: nn.Module,
    batch: EpisodeBatch,
    method: str = "pca",
    max_episodes: int = 3,
    seed: int = 0,
) -> list[EpisodeProjection]:
    """Embed and project the first ``max_episodes`` tasks of ``batch`` (one projection each).

    The algorithm runs in ``eval()`` mode under ``torch.no_grad()``; the train/eval mode of
    every sub-module is restored afterwards.
    """
    if method not in _METHODS:
        raise ValueError(f"method={method!r} is not known; use one of: {', '.join(_METHODS)}")
    if not isinstance(batch, EpisodeBatch):
        raise TypeError(f"batch must be an EpisodeBatch, got {type(batch).__name__}")
    if batch.ways is None:
        raise ValueError("batch.ways is None (a regression batch); embedding plots need classification episodes")
    if isinstance(max_episodes, bool) or not isinstance(max_episodes, int) or max_episodes < 1:
        raise ValueError(f"max_episodes={max_episodes!r} must be a positive int")
    embed = embedding_function(algorithm)
    modes = [(m, m.training) for m in algorithm.modules()]
    out: list[EpisodeProjection] = []
    try:
        algorithm.eval()
        with torch.no_grad():
            for i in range(min(max_episodes, batch.num_tasks)):
                ep = batch[i]
                s = ep.support_x.shape[0]
                z = embed(torch.cat([ep.support_x, ep.query_x]))
                if method == "pca":
                    coords, kept = pca_2d(z)
                else:
                    coords, kept = tsne_2d(z, seed=seed), None
                out.append(
                    EpisodeProjection(
                        coords[:s], coords[s:], ep.support_y.cpu(), ep.query_y.cpu(), batch.ways, method, kept,
                        None if ep.classes is None else ep.classes.cpu(),
                    )
                )
    finally:
        for m, mode in modes:
            m.training = mode
    return out


def _class_colours(ways: int) -> list:
    import matplotlib

    if ways <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(i) for i in range(ways)]
    if ways <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [cmap(i) for i in range(ways)]
    cmap = matplotlib.colormaps["hsv"]
    return [cmap(i / ways) for i in range(ways)]


def plot_embeddings(
    algorithm: nn.Module,
    batch: EpisodeBatch,
    out: str | os.PathLike,
    method: str = "pca",
    max_episodes: int = 3,
    title: str = "",
    seed: int = 0,
) -> Path:
    """Draw the projections of :func:`project_episodes` into the PNG file ``out`` (folders
    created; written atomically); returns its path."""
    projections = project_episodes(algorithm, batch, method, max_episodes, seed)
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    n = len(projections)
    fig, axes = plt.subplots(1, n, figsize=(4.8 * n, 5.0), squeeze=False)
    for i, (ax, pr) in enumerate(zip(axes[0], projections)):
        colours = _class_colours(pr.ways)
        for k in range(pr.ways):
            q = pr.query[pr.query_y == k]
            s = pr.support[pr.support_y == k]
            ax.scatter(s[:, 0], s[:, 1], s=130, marker="*", color=colours[k], edgecolors="black", linewidths=0.7, zorder=2)
            ax.scatter(q[:, 0], q[:, 1], s=18, color=colours[k], edgecolors="black", linewidths=0.3, alpha=0.9, zorder=3)
        if pr.method == "pca":
            sub = f"PCA, {100 * pr.explained:.0f}% of variance" if pr.explained is not None else "PCA"
        else:
            sub = "t-SNE"
        shots = pr.support.shape[0] // max(1, pr.ways)
        ax.set_title(f"episode {i + 1}: {pr.ways}-way {shots}-shot ({sub})", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
    handles = [
        Line2D([], [], marker="*", linestyle="", markersize=13, markerfacecolor="0.6", markeredgecolor="black", label="support"),
        Line2D([], [], marker="o", linestyle="", markersize=5, markerfacecolor="0.6", markeredgecolor="black", markeredgewidth=0.3, label="query"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=9, frameon=False, title="colour = class", title_fontsize=9)
    fig.suptitle(title or f"{type(algorithm).__name__} embeddings of test episodes", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save_figure(fig, out)


def plot_run_embeddings(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    method: str = "pca",
    split: str = "test",
    episodes: int = 3,
    seed: int | None = None,
    checkpoint: str = "best",
) -> Path:
    """Write ``embeddings.png`` for a trained run (``metakit plot RUN_DIR --embeddings``).

    Loads the run's ``checkpoint`` (see :func:`metakit.runtime.run.load_run`), draws
    ``episodes`` fixed episodes of ``split`` with the run's evaluation settings (``eval.ways``,
    ``eval.shots``, ``eval.queries``; seed ``eval.seed`` unless given) and plots their
    embeddings with :func:`plot_embeddings` into ``out_dir`` (default: the run folder).
    """
    from .run import load_run

    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes={episodes!r} must be a positive int")
    loaded = load_run(run_dir, checkpoint=checkpoint)
    cfg = loaded.config
    if cfg.family.kind != "classification":
        raise ValueError(
            f"run {str(run_dir)!r} solves {cfg.family.kind} tasks (task.family={cfg.family.name}); embedding plots "
            "need classification episodes"
        )
    embedding_function(loaded.algorithm)  # fail early, before loading data, for algorithms without embeddings
    batch = next(iter(loaded.episodes(split, episodes=episodes, seed=seed, batch_size=episodes)))
    dataset = cfg.family.describe()
    title = (
        f"{cfg.algorithm.name} embeddings, {dataset} {loaded.split_name(split)} episodes "
        f"({loaded.checkpoint.name}, step {loaded.step})"
    )
    out = Path(out_dir) if out_dir is not None else Path(run_dir)
    return plot_embeddings(loaded.algorithm, batch, out / EMBEDDINGS_PNG, method, episodes, title, seed or 0)
