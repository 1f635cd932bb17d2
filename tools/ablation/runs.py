"""One setting of the ablation: a seeded ``train_net.py`` run in a fresh process, its summary
(status, evaluation, last logged loss) and its result file ``OUTPUT/settings/NAME.json``."""

import datetime
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from typing import List, Optional, Sequence, Tuple

from .table1 import PAPER_TABLE1, AblationSetting

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOEvaluator's bbox metrics, in percent
_DIVERGED = re.compile(r"(NonFiniteLossError|NonFiniteWeightsError|FloatingPointError): (.*)")
_ITERATION = re.compile(r"iteration[ =](\d+)")


def parse_divergence(log: str) -> Optional[Tuple[int, str]]:
    """(iteration, message) if ``log`` ends in the trainer's non-finite loss / weights error, else
    None."""
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


def _diverged_summary(run_dir: str, returncode: int, log: str) -> dict:
    """The summary fields of a failed run: diverged, or a RuntimeError for any other failure."""
    diverged = parse_divergence(log)
    if diverged is None:
        tail = "\n".join(log.strip().splitlines()[-25:])
        raise RuntimeError(f"train_net.py failed (exit code {returncode}) in {run_dir}:\n{tail}")
    iteration, message = diverged
    summary = dict(status="diverged", diverged_at_iter=iteration, divergence=message[:500])
    summary.update({k: None for k in AP_KEYS})
    return summary


def _evaluated_summary(run_dir: str, metrics: List[dict]) -> dict:
    """The summary fields of a finished run: its last evaluation."""
    evaluated = [m for m in metrics if "bbox/AP" in m]
    if not evaluated:
        raise RuntimeError(
            f"train_net.py finished but {run_dir}/metrics.json holds no bbox/AP evaluation"
        )
    evaluation = evaluated[-1]
    summary = dict(status="ok", diverged_at_iter=None)
    summary.update({k: _finite_or_none(evaluation.get(f"bbox/{k}")) for k in AP_KEYS})
    summary["evaluated_at_iter"] = evaluation.get("iteration")
    return summary


def summarize_run(run_dir: str, returncode: int, log: str) -> dict:
    """Status, evaluation and last logged loss of a finished ``train_net.py`` run in ``run_dir``.

    AP values are the evaluator's (``bbox/AP*`` of the last evaluation in ``metrics.json``, in
    percent). Raises RuntimeError for a run that failed other than by diverging, or that left no
    evaluation."""
    metrics = read_metrics(run_dir)
    losses = [m for m in metrics if "total_loss" in m]
    last = losses[-1] if losses else {}
    summary = {
        # Detectron2's logged value: median of 20 iterations
        "final_loss": _finite_or_none(last.get("total_loss")),
        "final_loss_iter": last.get("iteration"),
    }
    if returncode != 0:
        summary.update(_diverged_summary(run_dir, returncode, log))
    else:
        summary.update(_evaluated_summary(run_dir, metrics))
    return summary


def write_text(path: str, text: str) -> None:
    """``text`` written to ``path`` atomically, in UTF-8."""
    from retinanet_plugin.utils import atomic_write

    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: str, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def result_path(output: str, name: str) -> str:
    return os.path.join(output, "settings", f"{name}.json")


def load_result(output: str, name: str) -> Optional[dict]:
    path = result_path(output, name)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def train(config_file: str, opts: Sequence[str], run_dir: str, threads: Optional[int]):
    """(exit code, log) of ``train_net.py`` run on one GPU (or the CPU) with ``OUTPUT_DIR`` =
    ``run_dir``; its output is also in ``run_dir/stdout.log``."""
    train_net = os.path.join(REPO_ROOT, "train_net.py")
    cmd = [sys.executable, train_net, "--config-file", config_file, "--num-gpus", "1", *opts]
    cmd += ["OUTPUT_DIR", run_dir]
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(os.path.join(run_dir, "stdout.log"), "w+") as log_file:
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
        log_file.seek(0)
        return proc.returncode, log_file.read()


def setting_fields(setting: AblationSetting) -> dict:
    """The fields of a result that describe its setting."""
    return {
        "name": setting.name,
        "ablation": setting.ablation,
        "gamma": setting.gamma,
        "alpha": setting.alpha,
        "prior_init": setting.prior_init,
        "prior_prob": setting.prior_prob,
        "anchors": setting.anchors,
        "seed": setting.seed,
    }


def delete_checkpoints(run_dir: str) -> None:
    for name in os.listdir(run_dir):
        if name.endswith(".pth") or name == "last_checkpoint":
            os.remove(os.path.join(run_dir, name))


def run_setting(
    setting: AblationSetting,
    config_file: str,
    opts: List[str],
    output: str,
    iters: int,
    threads: Optional[int] = None,
    keep_checkpoints: bool = False,
) -> dict:
    """Train and evaluate one setting in a fresh ``train_net.py`` process (``threads``: its OMP/MKL
    threads, None: inherited); write and return its result. Unless ``keep_checkpoints``, the run's
    checkpoints (~150 MB each with the optimizer state) are deleted once the result is written."""
    run_dir = os.path.join(output, "runs", setting.name)
    if os.path.isdir(run_dir):  # left by an interrupted run: start again (the run is seeded)
        shutil.rmtree(run_dir)
    os.makedirs(run_dir)
    start = time.time()
    returncode, log = train(config_file, opts, run_dir, threads)
    wall = time.time() - start
    result = {
        **setting_fields(setting),
        **summarize_run(run_dir, returncode, log),
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
    write_json(result_path(output, setting.name), result)
    if not keep_checkpoints:
        delete_checkpoints(run_dir)
    return result
