"""Plots of the bootstrap: frozen-set Dice per simulated round, and Dice against clinician effort."""

from __future__ import annotations

from pathlib import Path


def plot_report(report: dict, path: str | Path) -> Path:
    """PNG of the frozen-set Dice per round (candidate and active) against the labels trained on."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    rounds = report.get("rounds", [])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    x = [r["trained_on"] for r in rounds]
    ax.plot(x, [r["candidate_dice"] for r in rounds], "o", label="candidate")
    ax.plot(x, [r["active_dice"] for r in rounds], "-s", label="active model")
    for r in rounds:
        ax.annotate(
            f"r{r['round']}",
            (r["trained_on"], r["candidate_dice"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    if report.get("full_dice") is not None:
        ax.axhline(report["full_dice"], color="grey", ls="--", label="full supervision")
    ax.set_xlabel(f"slices trained on ({report.get('labels', '?')} clinician + pseudo-labels)")
    ax.set_ylabel("Dice on the frozen validation set")
    ax.set_title("Bootstrap rounds")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_effort_curve(curve: list[dict], path: str | Path) -> Path:
    """PNG of the active model's validation Dice against minutes of clinician effort, one point per round."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    points = [c for c in curve if c.get("dice") is not None]
    ax.plot([c["clinician_minutes"] for c in points], [c["dice"] for c in points], "-o")
    for c in points:
        ax.annotate(
            f"r{c['round']} ({c['clinician_slices']} sl)",
            (c["clinician_minutes"], c["dice"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    ax.set_xlabel("minutes of clinician effort (Review dock effort log)")
    ax.set_ylabel("validation Dice of the active model")
    ax.set_title("Dice against clinician effort")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
