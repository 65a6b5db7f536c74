"""One seaborn look for every figure, and saving figures where the run keeps them."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

R2_LINE = 0.7  # the papers' threshold for "linear"


def style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", palette="deep")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 130, "figure.figsize": (6.4, 4.0),
                         "axes.titleweight": "bold"})


def save(fig, run_dir: str | Path, notebook: str, name: str) -> Path:
    """Save `fig` as `figures/<notebook>/<name>.png` under the run directory (atomically)."""
    path = Path(run_dir) / "figures" / notebook / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    tmp = path.with_suffix(".png.tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return path
