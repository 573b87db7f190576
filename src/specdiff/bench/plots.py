"""PNG plots of a bench's results.json: speed-up and tau per method and budget, and the
acceptance-length histograms. Needs matplotlib (`pip install matplotlib`); `specdiff bench`
skips plots with a note when it is missing, and `specdiff plot DIR` redraws them later."""

from __future__ import annotations

from pathlib import Path


def plot_results(result: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["summary"]
    groups = sorted({(r["prompt_set"], r["temperature"]) for r in rows})
    written = []
    fig, axes = plt.subplots(2, len(groups), figsize=(4.5 * len(groups), 7), squeeze=False)
    for j, (pset, temp) in enumerate(groups):
        rs = [r for r in rows if r["prompt_set"] == pset and r["temperature"] == temp]
        labels = [r["method"] for r in rs]
        for i, (key, title) in enumerate((("speedup_vs_ar", "speed-up vs ar"), ("tau", "tau (tokens / round)"))):
            ax = axes[i][j]
            ax.bar(range(len(rs)), [r[key] for r in rs], color="tab:blue" if i == 0 else "tab:green")
            ax.set_xticks(range(len(rs)), labels, rotation=45, ha="right", fontsize=8)
            ax.set_title(f"{pset}, T={temp:g}: {title}", fontsize=9)
            if key == "speedup_vs_ar":
                ax.axhline(1.0, color="gray", lw=0.8)
    fig.tight_layout()
    path = out_dir / "speedup_tau.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    methods = sorted({r["method"] for r in result["runs"] if r["method"] != "ar"})
    if methods:
        fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 2.8), squeeze=False)
        for ax, m in zip(axes[0], methods):
            lengths = [n for r in result["runs"] if r["method"] == m for n in r["accept_lengths"]]
            top = max(lengths, default=1)
            ax.hist(lengths, bins=range(1, top + 2), align="left", color="tab:purple")
            ax.set_title(f"{m}: tokens per round", fontsize=9)
        fig.tight_layout()
        path = out_dir / "acceptance_hist.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written

