"""One seaborn look for every figure, and the figures several notebooks draw (R² histograms, heatmaps, series with
their fits)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from helpers.experiments import paper


def style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", palette="deep")
    plt.rcParams.update(
        {"figure.dpi": 100, "savefig.dpi": 130, "figure.figsize": (6.4, 4.0), "axes.titleweight": "bold"}
    )


def r2_histogram(
    values, ax=None, title: str = "R² against training step", bins: int = 50, threshold: float = paper.R2_BAR
):
    """Histogram of R² values on [0, 1] with the R² bar `threshold` (the `claims.r2_threshold` knob; default the
    papers' 0.7); the legend gives the median and the share above."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    fig, ax = plt.subplots() if ax is None else (ax.figure, ax)
    ax.hist(values, bins=np.linspace(0, 1, bins + 1), color=sns.color_palette()[0])
    ax.axvline(
        threshold,
        color="k",
        ls="--",
        lw=1,
        label=f"R² = {threshold:g}: {np.mean(values > threshold):.0%} above" if values.size else f"R² = {threshold:g}",
    )
    if values.size:
        ax.axvline(np.median(values), color=sns.color_palette()[3], lw=1.5, label=f"median {np.median(values):.2f}")
    ax.set(xlim=(0, 1), xlabel="R²", ylabel="count", title=title)
    ax.legend(loc="upper left")
    return fig


def heatmap(table, ax=None, title: str = "", vmin: float = 0.0, vmax: float = 1.0, fmt: str = ".2f"):
    """A DataFrame as an annotated heatmap (rows × columns), NaN cells blank."""
    n_rows, n_cols = table.shape
    fig, ax = (
        plt.subplots(figsize=(max(5.0, 0.7 * n_cols + 2), max(3.0, 0.35 * n_rows + 1.5)))
        if ax is None
        else (ax.figure, ax)
    )
    sns.heatmap(
        table.astype(float),
        ax=ax,
        vmin=vmin,
        vmax=vmax,
        cmap="viridis",
        annot=n_rows * n_cols <= 400,
        fmt=fmt,
        annot_kws={"size": 7},
        cbar_kws={"shrink": 0.8},
    )
    ax.set(title=title)
    return fig


def series_fits(examples, ncols: int = 3, ylabel: str = "value"):
    """Small multiples of series with their least-squares lines: each example a dict with steps, values, slope,
    intercept, r2 and a `label` (or `tensor` + `index`)."""
    n = max(1, len(examples))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.6 * nrows), squeeze=False)
    for ax, ex in zip(axes.flat, examples):
        t = np.asarray(ex["steps"], dtype=float)
        ax.plot(t, ex["values"], "o", ms=3.5)
        ax.plot(t, ex["slope"] * t + ex["intercept"], "-", color=sns.color_palette()[3], lw=1.2)
        label = ex.get("label") or f"{ex['tensor'].removeprefix('model.').removesuffix('.weight')}[{ex['index']}]"
        ax.set_title(f"{label}\nR² = {ex['r2']:.2f}", fontsize=8, fontweight="normal")
        ax.set(xlabel="step", ylabel=ylabel)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3), useOffset=True)
    for ax in list(axes.flat)[len(examples) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig
