"""PNG figures of the report (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mi_llm.miti.codebook import CODES  # noqa: E402
from mi_llm.report.data import ReportData  # noqa: E402
from mi_llm.report.sessions import change_share_by_round, stage_by_round  # noqa: E402
from mi_llm.simulate.persona import STAGES  # noqa: E402

THRESHOLDS = {"r_q": (1.0, 2.0), "pct_cr": (0.40, 0.50)}  # (fair, good), MITI 4.2.1


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def behaviour_counts(data: ReportData, path: Path) -> Path | None:
    """Box plots of behaviour counts per session, one box per system for each code (as in the paper)."""
    systems = list(data.miti_sessions)
    if not systems:
        return None
    fig, ax = plt.subplots(figsize=(max(8, len(CODES) * 1.1), 4.2))
    width = 0.8 / len(systems)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, system in enumerate(systems):
        sessions = data.miti_sessions[system]
        values = [[s["counts"].get(code, 0) for s in sessions] for code in CODES]
        pos = [k + (i - (len(systems) - 1) / 2) * width for k in range(len(CODES))]
        bp = ax.boxplot(values, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=True)
        for box in bp["boxes"]:
            box.set_facecolor(colors[i % len(colors)])
            box.set_alpha(0.6)
        ax.plot([], [], color=colors[i % len(colors)], lw=8, alpha=0.6, label=system)
    ax.set_xticks(range(len(CODES)))
    ax.set_xticklabels(CODES)
    ax.set_ylabel("count per session")
    ax.set_title("MITI 4.2.1 behaviour counts per session")
    ax.legend(fontsize=8)
    return _save(fig, path)


def ratios(data: ReportData, path: Path) -> Path | None:
    """Mean R:Q and %CR per system, with the MITI fair/good thresholds."""
    systems = list(data.miti_aggregate)
    if not systems:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, title in ((axes[0], "r_q", "Reflection : Question"), (axes[1], "pct_cr", "% Complex Reflections")):
        vals = [data.miti_aggregate[s].get(key, {}).get("mean") for s in systems]
        ax.bar(range(len(systems)), [v if v is not None else 0 for v in vals], color="#4c78a8")
        for k, v in enumerate(vals):
            ax.text(k, (v or 0), "n/a" if v is None else f"{v:.2f}", ha="center", va="bottom", fontsize=8)
        fair, good = THRESHOLDS[key]
        ax.axhline(fair, ls="--", color="#e45756", lw=1, label=f"fair {fair:g}")
        ax.axhline(good, ls=":", color="#54a24b", lw=1, label=f"good {good:g}")
        ax.set_xticks(range(len(systems)))
        ax.set_xticklabels(systems, rotation=20, ha="right", fontsize=8)
        ax.set_title(title)
        ax.legend(fontsize=7)
    return _save(fig, path)


def loss_curve(data: ReportData, path: Path) -> Path | None:
    if not any(data.loss_curves.values()):
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for model, points in data.loss_curves.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker=".", label=model)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("LoRA training loss")
    ax.legend(fontsize=8)
    return _save(fig, path)


def trajectories(outcomes: dict[str, list[dict]], path: Path) -> Path | None:
    """Per counselor, by round: the client's change-talk share and the mean stage of change
    (thin lines: each session's stage)."""
    if not any(outcomes.values()):
        return None
    fig, (talk_ax, stage_ax) = plt.subplots(1, 2, figsize=(11, 3.9))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, sessions) in enumerate(outcomes.items()):
        color = colors[i % len(colors)]
        points = change_share_by_round(sessions)
        if points:
            xs, ys, ns = zip(*points)
            talk_ax.plot(xs, ys, marker="o", color=color, label=label)
            for x, y, n in points:
                talk_ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(0, 5), fontsize=6, color=color)
        for o in sessions:
            track = [STAGES.index(s) for s in o.get("stages") or []]
            stage_ax.plot(range(len(track)), track, color=color, alpha=0.2, lw=1)
        mean = stage_by_round(sessions)
        if mean:
            xs, ys = zip(*mean)
            stage_ax.plot(xs, ys, marker="o", color=color, lw=2, label=f"{label} (mean)")
    talk_ax.set_ylim(-0.05, 1.05)
    talk_ax.set_xlabel("round (0: the client's opening)")
    talk_ax.set_ylabel("change / (change + sustain)")
    talk_ax.set_title("Client change-talk share by round (n: coded turns)")
    stage_ax.set_yticks(range(len(STAGES)))
    stage_ax.set_yticklabels(STAGES, fontsize=8)
    stage_ax.set_ylim(-0.2, len(STAGES) - 0.8)
    stage_ax.set_xlabel("round")
    stage_ax.set_title("Stage of change by round (ended sessions keep their last)")
    for ax in (talk_ax, stage_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(fig, path)
