"""The plan as a report: ``plans.md`` (every decision and its rule) and plots of the merged fingerprint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fedseg.io.atomic import atomic_write_text
from fedseg.planning.fingerprint import Fingerprint
from fedseg.planning.planner import Plan

__all__ = ["plan_markdown", "write_plan_report", "plot_fingerprint"]

log = logging.getLogger(__name__)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|")


def plan_markdown(plan: Plan, fp: Fingerprint, sites: list[str], plots: list[str]) -> str:
    """Markdown: summary of the merged fingerprint, the decisions, the configurations considered."""
    lines = [
        "# Federated plan", "",
        f"Sites: {', '.join(sites)} ({fp.num_cases} training cases in all; only summed statistics left each site).",
        f"Configuration: **{plan.configuration}**.", "",
        "## Merged fingerprint", "",
        "| statistic | value |", "|---|---|",
    ]
    lines += [f"| {k} | {_cell(v)} |" for k, v in plan.summary.items()]
    for c in range(fp.channels):
        if fp.intensity_count[c]:
            mean, std = fp.intensity_mean_std(c)
            lines.append(f"| channel {c} foreground | mean {mean:.4g}, std {std:.4g}, "
                         f"p0.5 {fp.intensity_percentile(c, 0.5):g}, p99.5 {fp.intensity_percentile(c, 99.5):g}, "
                         f"min {fp.intensity_min[c]:g}, max {fp.intensity_max[c]:g} |")
    lines += ["", "## Decisions", "", "| key | value | rule |", "|---|---|---|"]
    lines += [f"| `{d.key}` | `{_cell(d.value)}` | {_cell(d.rule)} |" for d in plan.decisions]
    lines += ["", "## Configurations considered", ""]
    for name, conf in plan.configurations.items():
        lines.append(f"- **{name}**: " + ", ".join(f"{k} {v}" for k, v in conf.items()))
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def plot_fingerprint(fp: Fingerprint, out_dir: Path) -> list[str]:
    """Spacing and shape histograms per axis, foreground intensity histograms, class fractions
    (one PNG; matplotlib imported here only). Returns the file names written (none without
    matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency, but the report must not need it
        log.warning("matplotlib is not installed: the plan report has no plots")
        return []
    dims = fp.spatial_dims
    fig, axes = plt.subplots(3, max(dims, 2), figsize=(4 * max(dims, 2), 9), squeeze=False)
    for a in range(dims):
        values, counts = fp.spacings_mm(a)
        axes[0][a].bar([f"{v:g}" for v in values], counts)
        axes[0][a].set_title(f"spacing, axis {a} (mm)")
        shapes = sorted(fp.shape[a])
        axes[1][a].bar([str(s) for s in shapes], [fp.shape[a][s] for s in shapes])
        axes[1][a].set_title(f"shape, axis {a} (voxels)")
    for a in range(dims, max(dims, 2)):
        axes[0][a].axis("off")
        axes[1][a].axis("off")
    for c in range(min(fp.channels, max(dims, 2) - 1)):
        keys = sorted(fp.intensity[c])
        axes[2][c].plot(keys, [fp.intensity[c][k] for k in keys], lw=0.8)
        axes[2][c].set_title(f"foreground intensity, channel {c}")
    last = axes[2][max(dims, 2) - 1]
    last.bar([str(k) for k in range(fp.num_classes)], fp.class_fractions())
    last.set_title("class voxel fraction")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "fingerprint.png"
    fig.savefig(out_dir / name, dpi=80)
    plt.close(fig)
    return [name]


def write_plan_report(plan: Plan, fp: Fingerprint, sites: list[str], out_dir: Path, plots: bool = True) -> Path:
    """Write ``out_dir/plans.md`` (+ ``fingerprint.png``); returns the markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = plot_fingerprint(fp, out_dir) if plots else []
    path = out_dir / "plans.md"
    atomic_write_text(path, plan_markdown(plan, fp, sites, names))
    return path
