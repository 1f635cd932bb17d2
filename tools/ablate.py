#!/usr/bin/env python
"""Run the paper's Table 1 ablations (Lin et al., "Focal Loss for Dense Object Detection") at small scale.

    python tools/ablate.py                                   # all settings, synthetic config, 400 iterations each
    python tools/ablate.py --iters 300 --settings gamma,anchors_1x1 --output output/abl SOLVER.BASE_LR 0.002
    python tools/ablate.py --list                            # the settings and the Table 1 rows they match
    python tools/ablate.py --threads 1                       # one thread per run: faster on a busy machine

Each setting is one seeded ``train_net.py`` run in a fresh process (``OUTPUT_DIR = OUTPUT/runs/NAME``), trained
for ``--iters`` iterations (the config's solver steps and warm-up scaled to that length) and evaluated by the
trainer's ``COCOEvaluator`` on the config's test set. Its result is written atomically to
``OUTPUT/settings/NAME.json``; a setting whose result file exists is skipped, so an interrupted ablation
continues where it stopped. A run stopped by a non-finite loss (the plugin's trainer raises
``NonFiniteLossError``) is recorded as ``diverged`` at that iteration; any other failure is reported, not
recorded, and retried on the next invocation. Checkpoints are deleted once a run is evaluated (unless
``--keep-checkpoints``). At the end ``results.json``, ``results.md`` and
``ablation_ap.png`` are (re)written in ``OUTPUT`` from every recorded setting.
"""
import argparse
import dataclasses
import datetime
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join("configs", "synthetic", "retinanet_R18_synthetic.yaml")
DEFAULT_OUTPUT = os.path.join("output", "ablations")
DEFAULT_ITERS = 400  # the schedule of benchmarks/results/ablations (about 50 min for all 9 settings here)
PAPER_PRIOR_PROB = 0.01  # the paper's pi for every experiment
NO_PRIOR_PROB = 0.5  # class bias -log((1 - 0.5) / 0.5) = 0: the "standard" init the paper compares against
RATIOS = {1: [1.0], 3: [0.5, 1.0, 2.0]}  # Table 1c: {1:1} or {1:2, 1:1, 2:1}

# Table 1 of the paper (ResNet-50-FPN, COCO minival, 600 px images): (AP, AP50, AP75) of the rows these settings
# reproduce. 1b: "varying gamma for FL (w. optimal alpha)"; 1c: "varying anchor scales and aspects" (with
# gamma 2, alpha .25). The prior pi = .01 is used in every row; without it, the paper (Sec. 5.1) says, training
# with CE fails quickly, the network diverging; it gives no number for FL without the prior.
PAPER_TABLE1 = {
    "1b gamma=0 alpha=.75": (31.1, 49.4, 33.0),
    "1b gamma=0.5 alpha=.50": (32.9, 51.7, 35.2),
    "1b gamma=1 alpha=.25": (33.7, 52.0, 36.2),
    "1b gamma=2 alpha=.25": (34.0, 52.5, 36.5),
    "1b gamma=5 alpha=.25": (32.2, 49.6, 34.8),
    "1c 1 scale x 1 ratio": (30.3, 49.0, 31.8),
    "1c 3 scales x 3 ratios": (34.0, 52.5, 36.5),
}


@dataclasses.dataclass(frozen=True)
class AblationSetting:
    """One training run of the ablation.

    ``prior_init`` False starts the class bias at 0 (every anchor at probability 0.5) instead of the paper's
    pi = 0.01. Anchors are ``num_scales`` octave scales 2^(k/num_scales) of each level's base size times
    ``num_ratios`` aspect ratios. ``paper_row`` names the matching row of :data:`PAPER_TABLE1` ("" if none).
    """

    name: str
    ablation: str  # "gamma", "prior", "anchors" or "seed": the question the setting answers
    gamma: float
    alpha: float
    prior_init: bool = True
    num_scales: int = 3
    num_ratios: int = 3
    seed: int = 1
    paper_row: str = ""
    paper_note: str = ""

    @property
    def prior_prob(self) -> float:
        return PAPER_PRIOR_PROB if self.prior_init else NO_PRIOR_PROB

    @property
    def anchors(self) -> str:
        return f"{self.num_scales}x{self.num_ratios}"


# The default ablation, in table order. gamma 2, alpha .25, pi .01, 3x3 anchors is the paper's final setting.
SETTINGS: Tuple[AblationSetting, ...] = (
    AblationSetting("g0_a75", "gamma", 0.0, 0.75, paper_row="1b gamma=0 alpha=.75", paper_note="CE, best alpha"),
    AblationSetting("g0.5_a50", "gamma", 0.5, 0.50, paper_row="1b gamma=0.5 alpha=.50"),
    AblationSetting("g1_a25", "gamma", 1.0, 0.25, paper_row="1b gamma=1 alpha=.25"),
    AblationSetting("g2_a25", "gamma", 2.0, 0.25, paper_row="1b gamma=2 alpha=.25", paper_note="paper's best"),
    AblationSetting("g5_a25", "gamma", 5.0, 0.25, paper_row="1b gamma=5 alpha=.25"),
    AblationSetting("g2_a25_noprior", "prior", 2.0, 0.25, prior_init=False, paper_note="no number in the paper"),
    AblationSetting("g0_a75_noprior", "prior", 0.0, 0.75, prior_init=False, paper_note="paper: CE diverges"),
    AblationSetting("anchors_1x1", "anchors", 2.0, 0.25, num_scales=1, num_ratios=1, paper_row="1c 1 scale x 1 ratio"),
    AblationSetting("g2_a25_seed2", "seed", 2.0, 0.25, seed=2, paper_note="g2_a25 with another seed: run-to-run noise"),
)
SETTINGS_BY_NAME: Dict[str, AblationSetting] = {s.name: s for s in SETTINGS}
BASELINE = "g2_a25"

# The panels of the plot: (title, settings) -- the baseline appears wherever it is the reference.
PLOT_PANELS = (
    ("gamma (alpha of Table 1b)", ("g0_a75", "g0.5_a50", "g1_a25", "g2_a25", "g5_a25")),
    ("prior init pi = .01 vs none", ("g2_a25", "g2_a25_noprior", "g0_a75", "g0_a75_noprior")),
    ("anchors (scales x ratios)", ("g2_a25", "anchors_1x1")),
    ("seed (noise)", ("g2_a25", "g2_a25_seed2")),
)


def select_settings(spec: str) -> List[AblationSetting]:
    """Settings from a comma-separated list of setting names and/or ablation names ("gamma", "prior", ...);
    "all" or "" selects every setting. Unknown names are an error that lists the known ones."""
    if spec.strip() in ("", "all"):
        return list(SETTINGS)
    chosen = []
    for word in (w.strip() for w in spec.split(",") if w.strip()):
        if word in SETTINGS_BY_NAME:
            matches = [SETTINGS_BY_NAME[word]]
        else:
            matches = [s for s in SETTINGS if s.ablation == word]
        if not matches:
            known = ", ".join([s.name for s in SETTINGS] + sorted({s.ablation for s in SETTINGS}))
            raise ValueError(f"--settings: unknown setting or ablation {word!r}; known: {known}")
        chosen += [m for m in matches if m not in chosen]
    return [s for s in SETTINGS if s in chosen]  # table order


def anchor_sizes(base_sizes: Sequence[float], num_scales: int) -> List[List[float]]:
    """Per level, ``num_scales`` octave scales of the level's base size: base * 2^(k / num_scales)."""
    if num_scales < 1:
        raise ValueError(f"num_scales must be >= 1, got {num_scales}")
    return [[float(base) * 2 ** (k / num_scales) for k in range(num_scales)] for base in base_sizes]


def setting_opts(setting: AblationSetting, base_sizes: Sequence[float]) -> List[str]:
    """``KEY VALUE`` config overrides of a setting; ``base_sizes``: the anchor base size of each level (the
    first size per level of the config's ``MODEL.ANCHOR_GENERATOR.SIZES``)."""
    if setting.num_ratios not in RATIOS:
        raise ValueError(f"{setting.name}: num_ratios must be one of {sorted(RATIOS)}, got {setting.num_ratios}")
    return [
        "MODEL.RETINANET.FOCAL_LOSS_GAMMA", repr(float(setting.gamma)),
        "MODEL.RETINANET.FOCAL_LOSS_ALPHA", repr(float(setting.alpha)),
        "MODEL.RETINANET.PRIOR_PROB", repr(setting.prior_prob),
        "MODEL.ANCHOR_GENERATOR.SIZES", repr(anchor_sizes(base_sizes, setting.num_scales)),
        "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", repr([RATIOS[setting.num_ratios]]),
        "SEED", str(setting.seed),
    ]


def schedule_opts(max_iter: int, steps: Sequence[int], warmup_iters: int, iters: int) -> List[str]:
    """Overrides that shorten a schedule of ``max_iter`` iterations to ``iters``: LR steps and warm-up scaled by
    ``iters / max_iter`` (at least 1 iteration, steps kept distinct and below ``iters``), evaluation and the only
    checkpoint (``model_final.pth``) at the end."""
    if iters < 1:
        raise ValueError(f"--iters must be >= 1, got {iters}")
    scale = iters / max_iter
    scaled_steps = sorted({round(s * scale) for s in steps} & set(range(1, iters)))
    return [
        "SOLVER.MAX_ITER", str(iters),
        "SOLVER.STEPS", repr(tuple(scaled_steps)),
        "SOLVER.WARMUP_ITERS", str(max(1, round(warmup_iters * scale))),
        "SOLVER.CHECKPOINT_PERIOD", str(iters + 1),  # no periodic checkpoint: model_final.pth only
        "TEST.EVAL_PERIOD", "0",  # evaluated once, after the last iteration
    ]


def load_config(config_file: str, opts: Sequence[str] = ()):
    from retinanet_plugin.engine import config_from_file

    cfg, _ = config_from_file(config_file, opts)
    return cfg


def run_opts(cfg, setting: AblationSetting, iters: int, user_opts: Sequence[str]) -> List[str]:
    """All overrides of one run: schedule, then the setting, then the user's (which win)."""
    base_sizes = [level[0] for level in cfg.MODEL.ANCHOR_GENERATOR.SIZES]  # one list: the same on every level
    return (
        schedule_opts(cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS, iters)
        + setting_opts(setting, base_sizes)
        + list(user_opts)
    )


# ---------------------------------------------------------------------------------------------- one run

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOEvaluator's bbox metrics, in percent
_DIVERGED = re.compile(r"(NonFiniteLossError|NonFiniteWeightsError|FloatingPointError): (.*)")
_ITERATION = re.compile(r"iteration[ =](\d+)")


def parse_divergence(log: str) -> Optional[Tuple[int, str]]:
    """(iteration, message) if ``log`` ends in the trainer's non-finite loss / weights error, else None."""
    matches = _DIVERGED.findall(log)
    if not matches:
        return None
    message = matches[-1][1].strip()
    found = _ITERATION.search(message)
    return (int(found.group(1)) if found else -1), message


def read_metrics(run_dir: str) -> List[dict]:
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _finite_or_none(value) -> Optional[float]:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def summarize_run(run_dir: str, returncode: int, log: str) -> dict:
    """Status, evaluation and last logged loss of a finished ``train_net.py`` run in ``run_dir``.

    AP values are the evaluator's (``bbox/AP*`` of the last evaluation in ``metrics.json``, in percent).
    Raises RuntimeError for a run that failed other than by diverging, or that left no evaluation."""
    metrics = read_metrics(run_dir)
    losses = [m for m in metrics if "total_loss" in m]
    last = losses[-1] if losses else {}
    summary = {
        "final_loss": _finite_or_none(last.get("total_loss")),  # Detectron2's logged value: median of 20 iterations
        "final_loss_iter": last.get("iteration"),
    }
    if returncode != 0:
        diverged = parse_divergence(log)
        if diverged is None:
            tail = "\n".join(log.strip().splitlines()[-25:])
            raise RuntimeError(f"train_net.py failed (exit code {returncode}) in {run_dir}:\n{tail}")
        iteration, message = diverged
        summary.update(status="diverged", diverged_at_iter=iteration, divergence=message[:500])
        summary.update({k: None for k in AP_KEYS})
        return summary
    evaluated = [m for m in metrics if "bbox/AP" in m]
    if not evaluated:
        raise RuntimeError(f"train_net.py finished but {run_dir}/metrics.json holds no bbox/AP evaluation")
    evaluation = evaluated[-1]
    summary.update(status="ok", diverged_at_iter=None)
    summary.update({k: _finite_or_none(evaluation.get(f"bbox/{k}")) for k in AP_KEYS})
    summary["evaluated_at_iter"] = evaluation.get("iteration")
    return summary


def _write_text(path: str, text: str) -> None:
    from retinanet_plugin.utils import atomic_write

    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _write_json(path: str, data) -> None:
    _write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def result_path(output: str, name: str) -> str:
    return os.path.join(output, "settings", f"{name}.json")


def run_setting(setting: AblationSetting, config_file: str, opts: List[str], output: str, iters: int,
                threads: Optional[int] = None, keep_checkpoints: bool = False) -> dict:
    """Train and evaluate one setting in a fresh ``train_net.py`` process (``threads``: its OMP/MKL threads, None:
    inherited); write and return its result. Unless ``keep_checkpoints``, the run's checkpoints (~150 MB each
    with the optimizer state) are deleted once the result is written."""
    run_dir = os.path.join(output, "runs", setting.name)
    if os.path.isdir(run_dir):  # left by an interrupted run: start again from scratch (the run is seeded)
        shutil.rmtree(run_dir)
    os.makedirs(run_dir)
    cmd = [sys.executable, os.path.join(REPO_ROOT, "train_net.py"), "--config-file", config_file, "--num-gpus", "1",
           *opts, "OUTPUT_DIR", run_dir]
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.time()
    with open(os.path.join(run_dir, "stdout.log"), "w+") as log_file:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        log_file.seek(0)
        log = log_file.read()
    wall = time.time() - start
    summary = summarize_run(run_dir, proc.returncode, log)
    result = {
        "name": setting.name,
        "ablation": setting.ablation,
        "gamma": setting.gamma,
        "alpha": setting.alpha,
        "prior_init": setting.prior_init,
        "prior_prob": setting.prior_prob,
        "anchors": setting.anchors,
        "seed": setting.seed,
        **summary,
        "wall_time_s": round(wall, 1),
        "threads": threads if threads is not None else os.environ.get("OMP_NUM_THREADS"),
        "iters": iters,
        "paper_row": setting.paper_row,
        "paper_AP_AP50_AP75": PAPER_TABLE1.get(setting.paper_row),
        "paper_note": setting.paper_note,
        "run_dir": os.path.relpath(run_dir, output),
        "config_file": os.path.relpath(config_file, REPO_ROOT),
        "opts": opts,
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    _write_json(result_path(output, setting.name), result)
    if not keep_checkpoints:
        for name in os.listdir(run_dir):
            if name.endswith(".pth") or name == "last_checkpoint":
                os.remove(os.path.join(run_dir, name))
    return result


def load_result(output: str, name: str) -> Optional[dict]:
    path = result_path(output, name)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------- reports


def _fmt(value, digits=1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def results_table(results: List[dict]) -> str:
    """The markdown table of ``results.md``."""
    header = ("| setting | ablation | γ | α | π init | anchors | seed | AP | AP50 | AP75 | final loss | status | "
              "wall time | paper AP / AP50 / AP75 (Table 1) |")
    lines = [header, "| " + " | ".join(["---"] * 14) + " |"]
    for r in results:
        status = r["status"] if r["status"] != "diverged" else f"diverged at iter {r['diverged_at_iter']}"
        paper = r.get("paper_AP_AP50_AP75")
        paper_text = " / ".join(f"{v:.1f}" for v in paper) + f" ({r['paper_row'][:2]})" if paper else ""
        if r.get("paper_note"):
            paper_text = f"{paper_text}; {r['paper_note']}" if paper_text else r["paper_note"]
        lines.append("| " + " | ".join([
            r["name"], r["ablation"], f"{r['gamma']:g}", f"{r['alpha']:g}",
            f"{r['prior_prob']:g}" if r["prior_init"] else "none (bias 0)", r["anchors"].replace("x", "×"),
            str(r["seed"]), _fmt(r["AP"]), _fmt(r["AP50"]), _fmt(r["AP75"]), _fmt(r["final_loss"], 3), status,
            f"{r['wall_time_s'] / 60:.1f} min", paper_text,
        ]) + " |")
    return "\n".join(lines)


def _bar_panel(ax, names, values, labels, color, top):
    bars = ax.bar(range(len(names)), [v or 0.0 for v in values], color=color)
    for bar, label in zip(bars, labels):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + top * 0.015, label, ha="center", va="bottom",
                fontsize=8)
    ax.set_ylim(0, top)
    ax.set_xticks(range(len(names)))


def _paper_short_note(result: dict) -> str:
    note = result.get("paper_note") or ""
    return note[len("paper: "):] if note.startswith("paper: ") else "no number"


def plot_ap(results: List[dict], path: str) -> None:
    """Bar chart of AP per setting, one column per ablation: this run's AP (top row; diverged runs in red) and
    the paper's Table 1 AP of the matching rows (bottom row, its own scale: COCO and ResNet-50)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {r["name"]: r for r in results}
    panels = [(title, [n for n in names if n in by_name]) for title, names in PLOT_PANELS]
    panels = [(title, names) for title, names in panels if names]
    widths = [max(len(names), 2) for _, names in panels]
    fig, axes = plt.subplots(2, len(panels), figsize=(2.0 + 1.1 * sum(widths), 6.4), sharey="row", squeeze=False,
                             gridspec_kw={"width_ratios": widths, "height_ratios": [3, 2]})
    top = max([r["AP"] or 0.0 for r in results] + [1.0]) * 1.2
    paper_top = max(p[0] for p in PAPER_TABLE1.values()) * 1.2
    for column, (title, names) in enumerate(panels):
        ours, paper = axes[0][column], axes[1][column]
        rows = [by_name[n] for n in names]
        _bar_panel(ours, names, [r["AP"] for r in rows],
                   [f"{r['AP']:.1f}" if r["AP"] is not None else f"diverged\n(iter {r['diverged_at_iter']})"
                    for r in rows],
                   ["tab:blue" if r["status"] == "ok" else "tab:red" for r in rows], top)
        ours.set_xticklabels([])
        ours.set_title(title, fontsize=9)
        paper_ap = [(r.get("paper_AP_AP50_AP75") or [None])[0] for r in rows]
        _bar_panel(paper, names, paper_ap,
                   [f"{v:.1f}" if v is not None else _paper_short_note(r) for v, r in zip(paper_ap, rows)],
                   "tab:gray", paper_top)
        paper.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    iters = "/".join(str(i) for i in sorted({r["iters"] for r in results}))
    axes[0][0].set_ylabel(f"box AP, synthetic val\n(this run, {iters} iterations)", fontsize=9)
    axes[1][0].set_ylabel("box AP, COCO minival\n(paper, Table 1, R50)", fontsize=9)
    fig.suptitle("RetinaNet ablations of the paper's Table 1 on the synthetic dataset", fontsize=10, x=0.02,
                 ha="left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    from retinanet_plugin.utils import atomic_write

    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def write_reports(output: str) -> List[dict]:
    """(Re)write results.json, results.md and ablation_ap.png from every recorded setting, in table order."""
    results = [r for r in (load_result(output, s.name) for s in SETTINGS) if r is not None]
    if not results:
        return results
    _write_json(os.path.join(output, "results.json"), {
        "description": "RetinaNet ablations of the paper's Table 1 on the synthetic shapes dataset; AP in percent "
                       "(COCOEvaluator on the config's test set); paper_AP_AP50_AP75: the paper's ResNet-50 COCO "
                       "numbers of the matching Table 1 row",
        "results": results,
    })
    total = sum(r["wall_time_s"] for r in results)
    schedules = sorted({" ".join(r["opts"][:8]) for r in results})
    threads = sorted({str(r.get("threads")) for r in results})
    md = (f"# RetinaNet ablations on the synthetic dataset\n\nWritten by `tools/ablate.py`: {len(results)} settings, "
          f"each a seeded `train_net.py` run of `{results[0]['config_file']}` with `{'`, `'.join(schedules)}` "
          f"(OMP threads: {', '.join(threads)}), evaluated by COCOEvaluator on the config's test set; "
          f"total run time {total / 60:.1f} min. The paper's numbers are ResNet-50 on COCO (Table 1).\n\n"
          + results_table(results) + "\n")
    _write_text(os.path.join(output, "results.md"), md)
    plot_ap(results, os.path.join(output, "ablation_ap.png"))
    return results


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, metavar="DIR")
    parser.add_argument("--iters", type=int, default=DEFAULT_ITERS, help="training iterations per setting")
    parser.add_argument("--settings", default="all",
                        help="comma-separated setting names and/or ablations (gamma, prior, anchors, seed)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP/MKL threads of each run (default: inherited). On a busy machine 1 thread "
                             "avoids the slowdown of threads waiting for each other")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep each run's model_final.pth (default: deleted once the run is evaluated)")
    parser.add_argument("--list", action="store_true", help="print the settings and exit")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE) for every run")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = select_settings(args.settings)
    if args.list:
        for s in settings:
            paper = PAPER_TABLE1.get(s.paper_row)
            print(f"{s.name:16s} {s.ablation:8s} gamma={s.gamma:<4g} alpha={s.alpha:<5g} prior={s.prior_prob:<5g} "
                  f"anchors={s.anchors} seed={s.seed}  paper: {s.paper_row or '-'} {paper or ''} {s.paper_note}")
        return 0
    if len(args.opts) % 2:
        raise SystemExit(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    config_file = os.path.abspath(args.config_file)
    output = os.path.abspath(args.output)
    cfg = load_config(config_file, args.opts)
    failures = []
    for setting in settings:
        opts = run_opts(cfg, setting, args.iters, args.opts)
        previous = load_result(output, setting.name)
        if previous is not None:
            if previous["opts"] != opts or previous["config_file"] != os.path.relpath(config_file, REPO_ROOT):
                raise SystemExit(
                    f"{result_path(output, setting.name)} was run with another config or overrides "
                    f"({previous['config_file']}: {previous['opts']}); use another --output or delete that file")
            print(f"[ablate] {setting.name}: done before ({previous['status']}, AP {_fmt(previous['AP'])}), skipped",
                  flush=True)
            continue
        print(f"[ablate] {setting.name}: training {args.iters} iterations ...", flush=True)
        try:
            result = run_setting(setting, config_file, opts, output, args.iters, args.threads, args.keep_checkpoints)
        except RuntimeError as e:
            failures.append(setting.name)
            print(f"[ablate] {setting.name}: FAILED, not recorded (run again to retry): {e}", flush=True)
            continue
        print(f"[ablate] {setting.name}: {result['status']}, AP {_fmt(result['AP'])} AP50 {_fmt(result['AP50'])}, "
              f"{result['wall_time_s']:.0f} s", flush=True)
        write_reports(output)
    results = write_reports(output)
    if results:
        print(results_table(results))
        print(f"[ablate] wrote {output}/results.json, results.md, ablation_ap.png")
    if failures:
        print(f"[ablate] failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
