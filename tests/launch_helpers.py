"""What tests/test_faults.py and tests/test_launch_modes.py share to run
tests/instrumented_train_net.py: the script and its config, its environment and records, the
two-worker curve run (settings, data, tolerances), and starting it in each launch mode (Detectron2's
launch on one or several "machines", torchrun) with bounded waits.
"""

import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import pytest

from conftest import REPO_ROOT

from retinanet_plugin.engine.launching import ENVIRONMENT_VARIABLES

__all__ = [
    "CONFIG",
    "CURVE_ITERATIONS",
    "CURVE_RUN",
    "EARLY_ITERATIONS",
    "EARLY_RTOL",
    "INSTRUMENTED",
    "LATE_RTOL",
    "LaunchedRun",
    "ONE_PROCESS_CURVE_RUN",
    "TWO_WORKER_CURVE_RUN",
    "fixed_size_dataset",
    "free_port",
    "machine_commands",
    "read_records",
    "relative_loss_differences",
    "run_launch",
    "run_two_workers",
    "spawn_command",
    "torchrun_command",
    "worker_env",
]

CONFIG = os.path.join(REPO_ROOT, "configs", "synthetic", "retinanet_R18_synthetic.yaml")
INSTRUMENTED = os.path.join(REPO_ROOT, "tests", "instrumented_train_net.py")


def worker_env(datasets_root, **extra):
    """The environment of an instrumented run: one thread per worker, ``extra`` variables."""
    return dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), OMP_NUM_THREADS="1", **extra)


def read_records(path):
    """The records of a json-lines file (RELIABILITY_RECORD's, a worker's rank file)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------------------------------
# The two-worker curve run: the same loss curve on 1 process or 2 workers
# --------------------------------------------------------------------------------------------------

# Same data order and the same augmentations in both runs: TrainingSampler hands worker r the
# shuffled indices r, r + 2, ... of one seeded permutation, so a total batch of 4 is the same 4
# images on 1 or 2 workers once aspect-ratio grouping is off; no random resize or flip; all images
# 128x128, so no batch pads differently; GN instead of BN, so no statistic depends on the per-worker
# batch. The "ema" normaliser is per worker (the all-reduced foreground count / number of workers):
# starting it at 100 / 2 with 2 workers makes 2 x normaliser(2 workers) == normaliser(1 process) at
# every step, hence the same logged losses and gradients.
CURVE_RUN = [
    "DATASETS.TRAIN",
    '("fixed_size_train",)',
    "DATASETS.TEST",
    "()",
    "MODEL.RESNETS.NORM",
    "GN",
    "SOLVER.IMS_PER_BATCH",
    "4",
    "SOLVER.BASE_LR",
    "0.002",
    "SOLVER.MAX_ITER",
    "8",
    "SOLVER.WARMUP_ITERS",
    "4",
    "SOLVER.STEPS",
    "(100,)",
    "SOLVER.CHECKPOINT_PERIOD",
    "1000",
    "INPUT.MIN_SIZE_TRAIN",
    "(128,)",
    "INPUT.MAX_SIZE_TRAIN",
    "128",
    "INPUT.RANDOM_FLIP",
    "none",
    "DATALOADER.ASPECT_RATIO_GROUPING",
    "False",
    "DATALOADER.NUM_WORKERS",
    "0",
    "SEED",
    "3",
]
# Measured on this CPU: iterations 0-4 differ by <= 1e-5 (relative), as a float32 sum over ~100k
# anchors does; then both runs drift apart, as training from scratch amplifies any rounding
# difference: a single process rerun with 2 threads instead of 1 drifts from itself by 5e-3 by
# iteration 7 in the same way.
EARLY_ITERATIONS, EARLY_RTOL, LATE_RTOL = 5, 1e-4, 5e-2
# the "ema" normaliser's start: 100 in one process, 100 / 2 per worker of two (see above)
ONE_PROCESS_CURVE_RUN = CURVE_RUN + ["MODEL.RETINANET_PLUGIN.NORMALIZER_EMA_INIT", "100.0"]
TWO_WORKER_CURVE_RUN = CURVE_RUN + ["MODEL.RETINANET_PLUGIN.NORMALIZER_EMA_INIT", "50.0"]
# the iterations that CURVE_RUN trains: 0 .. SOLVER.MAX_ITER - 1
CURVE_ITERATIONS = list(range(int(CURVE_RUN[CURVE_RUN.index("SOLVER.MAX_ITER") + 1])))


@pytest.fixture(scope="module")
def fixed_size_dataset(tmp_path_factory):
    """CURVE_RUN's data (``fixed_size_train``: 32 images of 128x128), as RELIABILITY_DATASETS."""
    from retinanet_plugin.data.synthetic_shapes import ensure_synthetic_shapes

    root = ensure_synthetic_shapes(
        str(tmp_path_factory.mktemp("fixed") / "shapes"),
        num_train=32,
        num_val=1,
        min_image_size=128,
        max_image_size=128,
    )
    return json.dumps(
        [["fixed_size_train", os.path.join(root, "train.json"), os.path.join(root, "train")]]
    )


def relative_loss_differences(one, two):
    """Per iteration, the largest relative difference of the loss terms of two curves."""
    keys = ("loss_cls", "loss_box_reg", "total_loss")
    return [max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in keys) for a, b in zip(one, two)]


# --------------------------------------------------------------------------------------------------
# Starting it in each launch mode
# --------------------------------------------------------------------------------------------------


# Rendezvous ports: not the kernel's own choice (bind to port 0), which it may hand to any other
# connection before the job binds it, but a random free one below the kernel's ephemeral range, in
# a slice of its own for each pytest-xdist worker, so that two test files running at once never
# pick the same port.
PORTS_PER_WORKER = 500
FIRST_PORT = 20000


def free_port() -> int:
    """A TCP port that was free on the loopback interface a moment ago, from this test process's
    slice of ports (outside the kernel's ephemeral range)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]
    low = FIRST_PORT + PORTS_PER_WORKER * (int(worker) if worker.isdigit() else 0)
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral = int(f.read().split()[0])
    except OSError:  # not Linux: no ephemeral range to avoid that we know of
        ephemeral = 65536
    high = min(low + PORTS_PER_WORKER, ephemeral)
    for port in random.Random().sample(range(low, high), high - low):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in {low}-{high - 1}")


def dist_url() -> str:
    """A ``--dist-url`` for a job on this machine (instead of Detectron2's "auto", which takes the
    kernel's choice)."""
    return f"tcp://127.0.0.1:{free_port()}"


def _script(*flags: str) -> List[str]:
    return [INSTRUMENTED, "--config-file", CONFIG, *flags]


def spawn_command(num_gpus: int, *flags: str) -> List[List[str]]:
    """One machine, ``num_gpus`` workers spawned by Detectron2's launch."""
    return [_script("--num-gpus", str(num_gpus), "--dist-url", dist_url(), *flags)]


def machine_commands(num_machines: int, *flags: str, port: Optional[int] = None) -> List[List[str]]:
    """``num_machines`` "machines" of one worker each on this one, meeting on the loopback."""
    url = f"tcp://127.0.0.1:{port or free_port()}"
    return [
        _script(
            "--num-gpus",
            "1",
            "--num-machines",
            str(num_machines),
            "--machine-rank",
            str(rank),
            "--dist-url",
            url,
            *flags,
        )
        for rank in range(num_machines)
    ]


def torchrun_command(nproc: int, *flags: str) -> List[List[str]]:
    """``torchrun --standalone --nproc-per-node nproc`` (the venv's torch.distributed.run)."""
    return [
        [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(nproc),
            *_script(*flags),
        ]
    ]


class LaunchedRun:
    """What one launch left: each launcher's exit status and output, rank 0's per-iteration
    records, each worker's record of how it was started, the wall time and the CPU time."""

    def __init__(self, out_dir, returncodes, logs, seconds, pids, cpu_seconds):
        self.out_dir = out_dir
        self.cpu_seconds: float = cpu_seconds  # of the launchers and their workers
        self.returncodes: List[int] = returncodes
        self.logs: List[str] = logs
        self.seconds: float = seconds
        self.pids: List[int] = pids
        record = out_dir / "record.jsonl"
        self.curve = read_records(record) if record.exists() else []
        ranks = out_dir / "ranks"
        self.ranks: Dict[int, dict] = {}
        for name in sorted(os.listdir(ranks)) if ranks.is_dir() else []:
            row = read_records(ranks / name)[0]
            self.ranks[row["rank"]] = row

    @property
    def log(self) -> str:
        return "\n".join(self.logs)

    def tail(self, n: int = 4000) -> str:
        return "\n".join(f"--- launcher {i}:\n{log[-n:]}" for i, log in enumerate(self.logs))


def run_launch(
    commands: Sequence[Sequence[str]],
    out_dir,
    datasets: str,
    opts: Sequence[str],
    timeout: float = 300,
    **env,
) -> LaunchedRun:
    """Run the launcher ``commands`` (each ``sys.executable`` arguments, + ``opts`` + OUTPUT_DIR)
    at once, as the machines of one job; wait for all of them, at most ``timeout`` seconds in all,
    then kill whatever is left of them (their spawned workers too) and fail."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ranks").mkdir(exist_ok=True)
    environment = worker_env(
        out_dir,
        RELIABILITY_DATASETS=datasets,
        RELIABILITY_RECORD=str(out_dir / "record.jsonl"),
        RELIABILITY_RANKS=str(out_dir / "ranks"),
        **env,
    )
    for name in ENVIRONMENT_VARIABLES:
        environment.pop(name, None)  # a launcher of the test run itself must not leak in
    log_paths = [out_dir / f"launcher{i}.log" for i in range(len(commands))]
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    procs = []
    try:
        for command, log_path in zip(commands, log_paths):
            with open(log_path, "w") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, *command, *opts, "OUTPUT_DIR", str(out_dir)],
                        cwd=REPO_ROOT,
                        env=environment,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group: killed with its workers
                    )
                )
        deadline = started + timeout
        for proc in procs:
            proc.wait(timeout=max(deadline - time.time(), 0.1))
    except subprocess.TimeoutExpired:
        logs = "\n".join(p.read_text()[-3000:] for p in log_paths)
        raise AssertionError(f"the launch did not end within {timeout} s:\n{logs}") from None
    finally:
        for proc in procs:  # what is left of each launch (all of it after a timeout)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    seconds = time.time() - started
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime
    return LaunchedRun(
        out_dir,
        [p.returncode for p in procs],
        [p.read_text() for p in log_paths],
        seconds,
        [p.pid for p in procs],
        cpu_seconds,
    )


def run_two_workers(script_text: str, folder, *args: str, timeout: float = 120) -> List[tuple]:
    """Runs ``script_text`` (written to ``folder/worker.py``) as ranks 0 and 1, each given the
    arguments RANK PORT FOLDER *args (PORT: a free loopback port for their process group, FOLDER for
    their outputs); returns (output, return code) per rank."""
    script = os.path.join(str(folder), "worker.py")
    with open(script, "w") as f:
        f.write(script_text)
    port = str(free_port())
    workers = [
        subprocess.Popen(
            [sys.executable, script, str(rank), port, str(folder), *args],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        return [(w.communicate(timeout=timeout)[0], w.returncode) for w in workers]
    finally:  # a worker left waiting for its peer after a timeout must not outlive the test
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
