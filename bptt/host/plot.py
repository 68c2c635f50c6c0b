"""Every picture bptt draws, as a PNG (needs matplotlib: the ``plot`` extra): training
and validation curves, and gradient flow through time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_gradient_flow", "plot_history"]


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


def plot_gradient_flow(results: list[dict], path: str | Path, *, title: str) -> None:
    """``bptt diagnose --plot``: the mean ||dL_t/ds_k|| by lag (log scale) in the first
    panel, then one t-by-k heat map per result (each a dict with ``label``,
    ``lag_mean``, ``norms`` and ``radius``, as ``bptt.cli.diagnose`` measures)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(results)
    fig, axes = plt.subplots(1, n + 1, figsize=(4.6 + 3.6 * n, 3.9), layout="constrained")
    ax = axes[0]
    logs, measured = [], []
    for i, result in enumerate(results):
        lag = result["lag_mean"]
        lags = np.arange(len(lag))
        color = f"C{i}"
        ax.semilogy(lags, lag, color=color, lw=2, label=result["label"])
        measured.append(lag[np.isfinite(lag) & (lag > 0)])
        guide = lag[0] * result["radius"] ** lags.astype(float)
        ax.semilogy(lags, guide, color=color, lw=1, ls=":")
        norms = result["norms"]
        lower = np.tril(np.ones_like(norms, dtype=bool))
        with np.errstate(divide="ignore"):
            logs.append(np.where(lower & (norms > 0), np.log10(norms), np.nan))
    ax.set_xlabel("lag t - k")
    ax.set_ylabel("mean ||dL_t / ds_k||")
    ax.set_title("gradient reaching k steps back\n(dotted: rho^lag from lag 0)", fontsize=10)
    data = np.concatenate(measured)
    if data.size:  # the guides may run far off: keep the measured curves in view
        ax.set_ylim(data.min() / 10, data.max() * 1e3)
    ax.legend(fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    finite = np.concatenate([x[np.isfinite(x)] for x in logs])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 0.0)
    for ax, result, img in zip(axes[1:], results, logs, strict=True):
        T = img.shape[0]
        shown = ax.imshow(
            img, origin="upper", cmap="viridis", vmin=vmin, vmax=vmax,
            extent=(0.5, T + 0.5, T + 0.5, 0.5), interpolation="nearest",
        )  # fmt: skip
        ax.set_xlabel("k (state)")
        ax.set_ylabel("t (loss step)")
        ax.set_title(f"log10 ||dL_t / ds_k||, {result['label']}", fontsize=10)
    fig.colorbar(shown, ax=list(axes[1:]), shrink=0.9, label="log10 norm")
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
