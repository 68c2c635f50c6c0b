"""Training and validation curves as a PNG (needs matplotlib: the ``plot`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_history"]


def plot_history(history: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Training and validation bits per character against step, as a PNG (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(history["train_step"], history["train_bpc"], label="training", lw=1)
    ax.plot(history["val_step"], history["val_bpc"], "o-", label="validation", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("bits per character")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
