"""The results table (Markdown, for the terminal and the docs) and the plot."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.common import Row

START = "<!-- results:start (written by tests/benchmarks/run.py) -->"
END = "<!-- results:end -->"


def format_number(value: float | None) -> str:
    """Three significant figures, thousands separated; blank for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 1:
        return f"{value:.3g}" if magnitude < 10 else f"{value:.1f}"
    return f"{value:.2g}"


def _holds(row: Row) -> str:
    return {True: "✅ yes", False: "❌ no", None: ""}[row.holds]


def markdown_table(rows: Iterable[Row]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| benchmark | metric | unit | plugin | reference | ratio | target | holds | note |",
        "|---|---|---|---:|---:|---:|---|---|---|",
    ]
    for row in rows:
        reference = format_number(row.reference)
        if reference and row.reference_name:
            reference = f"{reference} ({row.reference_name})"
        cells = [
            row.benchmark,
            row.metric,
            row.unit,
            format_number(row.plugin),
            reference,
            format_number(row.ratio),
            row.target,
            _holds(row),
            row.note,
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def machine_lines(machine: dict[str, Any], load: dict[str, Any]) -> str:
    """The machine and its load, as Markdown bullets."""
    return "\n".join(
        [
            (
                f"- CPU: {machine['cpu_model']}, {machine['cores']} cores; "
                f"memory {machine['memory_gib']} GiB; {machine['platform']}"
            ),
            (
                f"- Python {machine['python']}, distributed {machine['distributed']}, "
                f"dask {machine['dask']}"
            ),
            (
                f"- load average (1, 5, 15 min) at the start: {_load(load['start'])}; "
                f"at the end: {_load(load['end'])}"
            ),
            f"- run: {load['when']}, {load['mode']} mode, {load['seconds']:.0f} s",
        ]
    )


def _load(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def replace_generated(document: str, generated: str) -> str:
    """Put ``generated`` between the result markers of ``document``."""
    block = f"{START}\n{generated}\n{END}"
    if START in document and END in document:
        pattern = re.escape(START) + r".*?" + re.escape(END)
        return re.sub(pattern, lambda _: block, document, flags=re.DOTALL)
    return document.rstrip() + "\n\n" + block + "\n"


def plot_efficiency(results: dict[str, Any], path: Path) -> None:
    """Workers over time for each workload, every repetition of each side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = results["workloads"]
    fig, axes = plt.subplots(
        len(workloads), 1, figsize=(9, 2.6 * len(workloads)), squeeze=False
    )
    styles = {
        "plugin": ("tab:blue", "plugin (local backend)"),
        "adaptive": ("tab:orange", "LocalCluster.adapt()"),
        "cluster_adaptive": (
            "tab:green",
            "LocalCluster.adapt(Adaptive=ClusterAdaptive)",
        ),
    }
    for ax, (name, sides) in zip(axes[:, 0], workloads.items()):
        for side, (color, label) in styles.items():
            for i, run in enumerate(sides.get(side, [])):
                times, counts = zip(*run["series"])
                ax.step(times, counts, where="post", color=color, alpha=0.7,
                        label=label if i == 0 else None)  # fmt: skip
        ax.set_title(f"{name}: {sides['spec']['describe']}", fontsize=9)
        ax.set_ylabel("workers")
        ax.set_ylim(-0.2, results["maximum"] + 0.5)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("seconds since the first submit")
    axes[0, 0].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
