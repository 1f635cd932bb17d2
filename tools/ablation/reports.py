"""The reports of an ablation, (re)written in its output folder from every recorded setting:
``results.json``, ``results.md`` (a markdown table) and ``ablation_ap.png`` (a bar chart of AP)."""

import io
import os
from typing import List

from .runs import load_result, write_json, write_text
from .table1 import PAPER_TABLE1, PLOT_PANELS, SETTINGS

TABLE_HEADER = (
    "| setting | ablation | γ | α | π init | anchors | seed | AP | AP50 | AP75 | final loss "
    "| status | wall time | paper AP / AP50 / AP75 (Table 1) |"
)


def fmt(value, digits=1) -> str:
    """``value`` with ``digits`` decimals, or a dash for None."""
    return "–" if value is None else f"{value:.{digits}f}"


def _paper_text(r: dict) -> str:
    """The last column of a result's row: the paper's numbers of its Table 1 row, and its note."""
    paper = r.get("paper_AP_AP50_AP75")
    paper_text = " / ".join(f"{v:.1f}" for v in paper) + f" ({r['paper_row'][:2]})" if paper else ""
    if r.get("paper_note"):
        paper_text = f"{paper_text}; {r['paper_note']}" if paper_text else r["paper_note"]
    return paper_text


def _table_row(r: dict) -> str:
    status = r["status"]
    if status == "diverged":
        status = f"diverged at iter {r['diverged_at_iter']}"
    prior = f"{r['prior_prob']:g}" if r["prior_init"] else "none (bias 0)"
    cells = [
        r["name"],
        r["ablation"],
        f"{r['gamma']:g}",
        f"{r['alpha']:g}",
        prior,
        r["anchors"].replace("x", "×"),
        str(r["seed"]),
        fmt(r["AP"]),
        fmt(r["AP50"]),
        fmt(r["AP75"]),
        fmt(r["final_loss"], 3),
        status,
        f"{r['wall_time_s'] / 60:.1f} min",
        _paper_text(r),
    ]
    return "| " + " | ".join(cells) + " |"


def results_table(results: List[dict]) -> str:
    """The markdown table of ``results.md``."""
    lines = [TABLE_HEADER, "| " + " | ".join(["---"] * 14) + " |"]
    lines += [_table_row(r) for r in results]
    return "\n".join(lines)


def _bar_panel(ax, names, values, labels, color, top):
    bars = ax.bar(range(len(names)), [v or 0.0 for v in values], color=color)
    for bar, label in zip(bars, labels):
        x = bar.get_x() + bar.get_width() / 2
        ax.text(x, bar.get_height() + top * 0.015, label, ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, top)
    ax.set_xticks(range(len(names)))


def _paper_short_note(result: dict) -> str:
    note = result.get("paper_note") or ""
    return note[len("paper: ") :] if note.startswith("paper: ") else "no number"


def _plot_column(ours, paper, title, rows, top, paper_top):
    """One ablation's panels: this run's AP (``ours``) and the paper's (``paper``)."""
    names = [r["name"] for r in rows]
    labels = [
        f"{r['AP']:.1f}" if r["AP"] is not None else f"diverged\n(iter {r['diverged_at_iter']})"
        for r in rows
    ]
    colors = ["tab:blue" if r["status"] == "ok" else "tab:red" for r in rows]
    _bar_panel(ours, names, [r["AP"] for r in rows], labels, colors, top)
    ours.set_xticklabels([])
    ours.set_title(title, fontsize=9)
    paper_ap = [(r.get("paper_AP_AP50_AP75") or [None])[0] for r in rows]
    paper_labels = [
        f"{v:.1f}" if v is not None else _paper_short_note(r) for v, r in zip(paper_ap, rows)
    ]
    _bar_panel(paper, names, paper_ap, paper_labels, "tab:gray", paper_top)
    paper.set_xticklabels(names, rotation=35, ha="right", fontsize=8)


def plot_ap(results: List[dict], path: str) -> None:
    """Bar chart of AP per setting, one column per ablation: this run's AP (top row; diverged runs
    in red) and the paper's Table 1 AP of the matching rows (bottom row, its own scale: COCO and
    ResNet-50)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from retinanet_plugin.utils import atomic_write

    by_name = {r["name"]: r for r in results}
    panels = [(title, [n for n in names if n in by_name]) for title, names in PLOT_PANELS]
    panels = [(title, names) for title, names in panels if names]
    widths = [max(len(names), 2) for _, names in panels]
    fig, axes = plt.subplots(
        2,
        len(panels),
        figsize=(2.0 + 1.1 * sum(widths), 6.4),
        sharey="row",
        squeeze=False,
        gridspec_kw={"width_ratios": widths, "height_ratios": [3, 2]},
    )
    top = max([r["AP"] or 0.0 for r in results] + [1.0]) * 1.2
    paper_top = max(p[0] for p in PAPER_TABLE1.values()) * 1.2
    for column, (title, names) in enumerate(panels):
        rows = [by_name[n] for n in names]
        _plot_column(axes[0][column], axes[1][column], title, rows, top, paper_top)
    iters = "/".join(str(i) for i in sorted({r["iters"] for r in results}))
    axes[0][0].set_ylabel(f"box AP, synthetic val\n(this run, {iters} iterations)", fontsize=9)
    axes[1][0].set_ylabel("box AP, COCO minival\n(paper, Table 1, R50)", fontsize=9)
    fig.suptitle(
        "RetinaNet ablations of the paper's Table 1 on the synthetic dataset",
        fontsize=10,
        x=0.02,
        ha="left",
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def results_markdown(results: List[dict]) -> str:
    """The text of ``results.md``: how the settings were run, then :func:`results_table`."""
    total = sum(r["wall_time_s"] for r in results)
    schedules = sorted({" ".join(r["opts"][:8]) for r in results})
    threads = sorted({str(r.get("threads")) for r in results})
    return (
        f"# RetinaNet ablations on the synthetic dataset\n\nWritten by `tools/ablate.py`: "
        f"{len(results)} settings, each a seeded `train_net.py` run of "
        f"`{results[0]['config_file']}` with `{'`, `'.join(schedules)}` "
        f"(OMP threads: {', '.join(threads)}), evaluated by COCOEvaluator on the config's test "
        f"set; total run time {total / 60:.1f} min. The paper's numbers are ResNet-50 on COCO "
        "(Table 1).\n\n" + results_table(results) + "\n"
    )


def write_reports(output: str) -> List[dict]:
    """(Re)write results.json, results.md and ablation_ap.png from every recorded setting, in table
    order."""
    results = [r for r in (load_result(output, s.name) for s in SETTINGS) if r is not None]
    if not results:
        return results
    description = (
        "RetinaNet ablations of the paper's Table 1 on the synthetic shapes dataset; AP in percent "
        "(COCOEvaluator on the config's test set); paper_AP_AP50_AP75: the paper's ResNet-50 COCO "
        "numbers of the matching Table 1 row"
    )
    write_json(
        os.path.join(output, "results.json"), {"description": description, "results": results}
    )
    write_text(os.path.join(output, "results.md"), results_markdown(results))
    plot_ap(results, os.path.join(output, "ablation_ap.png"))
    return results
