#!/usr/bin/env python
"""Run the paper's Table 1 ablations (Lin et al., "Focal Loss for Dense Object Detection") at small
scale.

    python tools/ablate.py                      # all settings, synthetic config, 400 iterations
    python tools/ablate.py --iters 300 --settings gamma,anchors_1x1 --output output/abl \\
        SOLVER.BASE_LR 0.002
    python tools/ablate.py --list               # the settings and the Table 1 rows they match
    python tools/ablate.py --threads 1          # one thread per run: faster on a busy machine

Each setting is one seeded ``train_net.py`` run in a fresh process
(``OUTPUT_DIR = OUTPUT/runs/NAME``), trained for ``--iters`` iterations (the config's solver steps
and warm-up scaled to that length) and evaluated by the trainer's ``COCOEvaluator`` on the config's
test set. Its result is written atomically to ``OUTPUT/settings/NAME.json``; a setting whose result
file exists is skipped, so an interrupted ablation continues where it stopped. A run stopped by a
non-finite loss (the plugin's trainer raises ``NonFiniteLossError``) is recorded as ``diverged`` at
that iteration; any other failure is reported, not recorded, and retried on the next invocation.
Checkpoints are deleted once a run is evaluated (unless ``--keep-checkpoints``). At the end
``results.json``, ``results.md`` and ``ablation_ap.png`` are (re)written in ``OUTPUT`` from every
recorded setting.

The settings and the paper's numbers are in ``tools/ablation/table1.py``, the runs in ``runs.py``,
the reports in ``reports.py``.
"""

import argparse
import os
import sys
from typing import List, Sequence

# tools/ablation/, beside this script (the script's folder is first on sys.path)
from ablation.reports import fmt, results_table, write_reports
from ablation.runs import REPO_ROOT, load_result, result_path, run_setting, summarize_run
from ablation.table1 import (
    BASELINE,
    PAPER_TABLE1,
    RATIOS,
    SETTINGS,
    SETTINGS_BY_NAME,
    AblationSetting,
)

__all__ = [
    "BASELINE",
    "PAPER_TABLE1",
    "SETTINGS",
    "SETTINGS_BY_NAME",
    "AblationSetting",
    "anchor_sizes",
    "load_config",
    "main",
    "run_opts",
    "schedule_opts",
    "select_settings",
    "setting_opts",
    "summarize_run",
]

DEFAULT_CONFIG = os.path.join("configs", "synthetic", "retinanet_R18_synthetic.yaml")
DEFAULT_OUTPUT = os.path.join("output", "ablations")
# the schedule of benchmarks/results/ablations (about 50 min for all 9 settings here)
DEFAULT_ITERS = 400


def select_settings(spec: str) -> List[AblationSetting]:
    """Settings from a comma-separated list of setting names and/or ablation names ("gamma",
    "prior", ...); "all" or "" selects every setting. Unknown names are an error that lists the
    known ones."""
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
    """Per level, ``num_scales`` octave scales of the level's base size:
    base * 2^(k / num_scales)."""
    if num_scales < 1:
        raise ValueError(f"num_scales must be >= 1, got {num_scales}")
    return [[float(base) * 2 ** (k / num_scales) for k in range(num_scales)] for base in base_sizes]


def setting_opts(setting: AblationSetting, base_sizes: Sequence[float]) -> List[str]:
    """``KEY VALUE`` config overrides of a setting; ``base_sizes``: the anchor base size of each
    level (the first size per level of the config's ``MODEL.ANCHOR_GENERATOR.SIZES``)."""
    if setting.num_ratios not in RATIOS:
        raise ValueError(
            f"{setting.name}: num_ratios must be one of {sorted(RATIOS)}, got {setting.num_ratios}"
        )
    return [
        "MODEL.RETINANET.FOCAL_LOSS_GAMMA",
        repr(float(setting.gamma)),
        "MODEL.RETINANET.FOCAL_LOSS_ALPHA",
        repr(float(setting.alpha)),
        "MODEL.RETINANET.PRIOR_PROB",
        repr(setting.prior_prob),
        "MODEL.ANCHOR_GENERATOR.SIZES",
        repr(anchor_sizes(base_sizes, setting.num_scales)),
        "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS",
        repr([RATIOS[setting.num_ratios]]),
        "SEED",
        str(setting.seed),
    ]


def schedule_opts(max_iter: int, steps: Sequence[int], warmup_iters: int, iters: int) -> List[str]:
    """Overrides that shorten a schedule of ``max_iter`` iterations to ``iters``: LR steps and
    warm-up scaled by ``iters / max_iter`` (at least 1 iteration, steps kept distinct and below
    ``iters``), evaluation and the only checkpoint (``model_final.pth``) at the end."""
    if iters < 1:
        raise ValueError(f"--iters must be >= 1, got {iters}")
    scale = iters / max_iter
    scaled_steps = sorted({round(s * scale) for s in steps} & set(range(1, iters)))
    return [
        "SOLVER.MAX_ITER",
        str(iters),
        "SOLVER.STEPS",
        repr(tuple(scaled_steps)),
        "SOLVER.WARMUP_ITERS",
        str(max(1, round(warmup_iters * scale))),
        "SOLVER.CHECKPOINT_PERIOD",
        str(iters + 1),  # no periodic checkpoint: model_final.pth only
        "TEST.EVAL_PERIOD",
        "0",  # evaluated once, after the last iteration
    ]


def load_config(config_file: str, opts: Sequence[str] = ()):
    from retinanet_plugin.engine import config_from_file

    cfg, _ = config_from_file(config_file, opts)
    return cfg


def run_opts(cfg, setting: AblationSetting, iters: int, user_opts: Sequence[str]) -> List[str]:
    """All overrides of one run: schedule, then the setting, then the user's (which win)."""
    # one list: the same on every level
    base_sizes = [level[0] for level in cfg.MODEL.ANCHOR_GENERATOR.SIZES]
    solver = cfg.SOLVER
    return (
        schedule_opts(solver.MAX_ITER, solver.STEPS, solver.WARMUP_ITERS, iters)
        + setting_opts(setting, base_sizes)
        + list(user_opts)
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, metavar="DIR")
    parser.add_argument(
        "--iters", type=int, default=DEFAULT_ITERS, help="training iterations per setting"
    )
    parser.add_argument(
        "--settings",
        default="all",
        help="comma-separated setting names and/or ablations (gamma, prior, anchors, seed)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP/MKL threads of each run (default: inherited). On a busy machine 1 thread "
        "avoids the slowdown of threads waiting for each other",
    )
    parser.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep each run's model_final.pth (default: deleted once the run is evaluated)",
    )
    parser.add_argument("--list", action="store_true", help="print the settings and exit")
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE) for every run"
    )
    return parser.parse_args(argv)


def print_settings(settings: Sequence[AblationSetting]) -> None:
    for s in settings:
        paper = PAPER_TABLE1.get(s.paper_row)
        print(
            f"{s.name:16s} {s.ablation:8s} gamma={s.gamma:<4g} alpha={s.alpha:<5g} "
            f"prior={s.prior_prob:<5g} anchors={s.anchors} seed={s.seed}  "
            f"paper: {s.paper_row or '-'} {paper or ''} {s.paper_note}"
        )


def ablate_setting(setting: AblationSetting, cfg, config_file: str, output: str, args) -> bool:
    """Train and evaluate ``setting`` unless its result was recorded before (with the same config
    and overrides; else SystemExit); False if its run failed and was not recorded."""
    opts = run_opts(cfg, setting, args.iters, args.opts)
    previous = load_result(output, setting.name)
    if previous is not None:
        same_config = previous["config_file"] == os.path.relpath(config_file, REPO_ROOT)
        if previous["opts"] != opts or not same_config:
            raise SystemExit(
                f"{result_path(output, setting.name)} was run with another config or overrides "
                f"({previous['config_file']}: {previous['opts']}); use another --output or delete "
                "that file"
            )
        print(
            f"[ablate] {setting.name}: done before ({previous['status']}, "
            f"AP {fmt(previous['AP'])}), skipped",
            flush=True,
        )
        return True
    print(f"[ablate] {setting.name}: training {args.iters} iterations ...", flush=True)
    try:
        result = run_setting(
            setting, config_file, opts, output, args.iters, args.threads, args.keep_checkpoints
        )
    except RuntimeError as e:
        print(
            f"[ablate] {setting.name}: FAILED, not recorded (run again to retry): {e}", flush=True
        )
        return False
    print(
        f"[ablate] {setting.name}: {result['status']}, AP {fmt(result['AP'])} "
        f"AP50 {fmt(result['AP50'])}, {result['wall_time_s']:.0f} s",
        flush=True,
    )
    write_reports(output)
    return True


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = select_settings(args.settings)
    if args.list:
        print_settings(settings)
        return 0
    if len(args.opts) % 2:
        raise SystemExit(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    config_file = os.path.abspath(args.config_file)
    output = os.path.abspath(args.output)
    cfg = load_config(config_file, args.opts)
    failures = []
    for setting in settings:
        if not ablate_setting(setting, cfg, config_file, output, args):
            failures.append(setting.name)
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
