"""train_net.py with test instruments, run as a script by tests/test_faults.py and
tests/test_launch_modes.py (same command line as train_net.py).

Environment variables, read in every worker process:
    RELIABILITY_DATASETS  json list of [name, coco_json_file, image_root]: COCO datasets to
                          register.
    RELIABILITY_RECORD    path: rank 0 appends one json line per iteration with the loss terms
                          (the mean over workers that Detectron2 logs) and its resident memory in
                          MiB.
    RELIABILITY_FAULT     "RANK:ITERATION": that worker raises a RuntimeError before that iteration.
    RELIABILITY_RESUME_FAULT
                          "RANK": that worker cannot read any checkpoint (CheckpointReadError), so
                          its --resume finds no readable one.
    RELIABILITY_RANKS     folder: each worker writes rank<RANK>.json there, saying how it was
                          started (Detectron2's comm: rank, world size, local rank and size; pid,
                          parent pid, whether multiprocessing spawned it; the torchrun variables).

Started like train_net.py: --num-gpus / --num-machines (Detectron2's launch) or torchrun.
"""

import json
import multiprocessing
import os
import sys

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TESTS_DIR))  # the repository root, for train_net

import train_net  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402
from detectron2.engine import HookBase, default_argument_parser  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from retinanet_plugin.checkpoint import CheckpointReadError, checked_checkpointer  # noqa: E402
from retinanet_plugin.engine import RetinaNetPluginTrainer  # noqa: E402
from retinanet_plugin.engine.launching import launch_from_args  # noqa: E402

LOSS_KEYS = ("loss_cls", "loss_box_reg", "total_loss")


def resident_memory_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


class RecordEveryIteration(HookBase):
    def __init__(self, path):
        self.path = path

    def after_step(self):
        latest = self.trainer.storage.latest()
        row = {"iteration": self.trainer.iter, "rss_mib": resident_memory_mib()}
        row.update(
            {
                k: latest[k][0]
                for k in LOSS_KEYS
                if k in latest and latest[k][1] == self.trainer.iter
            }
        )
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class RaiseOnOneWorker(HookBase):
    def __init__(self, rank, iteration):
        self.rank, self.iteration = rank, iteration

    def before_step(self):
        if comm.get_rank() == self.rank and self.trainer.iter == self.iteration:
            raise RuntimeError(
                f"injected fault on rank {self.rank} before iteration {self.iteration}"
            )


def record_how_this_worker_started(folder):
    row = {
        "rank": comm.get_rank(),
        "world_size": comm.get_world_size(),
        "local_rank": comm.get_local_rank(),
        "local_size": comm.get_local_size(),
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "spawned_by_multiprocessing": multiprocessing.parent_process() is not None,
        "environment": {
            k: os.environ.get(k)
            for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID")
        },
    }
    with open(os.path.join(folder, f"rank{row['rank']}.json"), "w") as f:
        json.dump(row, f)


def break_checkpoint_reading_on(rank):
    if comm.get_rank() != rank:
        return

    def unreadable(filename):
        raise CheckpointReadError(f"injected fault: rank {rank} cannot read {filename}")

    checked_checkpointer.read_checkpoint_file = unreadable  # what the checkpointer reads with


def instrument():
    if os.environ.get("RELIABILITY_RANKS"):
        record_how_this_worker_started(os.environ["RELIABILITY_RANKS"])
    if os.environ.get("RELIABILITY_RESUME_FAULT"):
        break_checkpoint_reading_on(int(os.environ["RELIABILITY_RESUME_FAULT"]))
    for name, json_file, image_root in json.loads(os.environ.get("RELIABILITY_DATASETS", "[]")):
        register_coco_instances(name, {}, json_file, image_root)
    extra = []
    if os.environ.get("RELIABILITY_RECORD") and comm.is_main_process():
        extra.append(RecordEveryIteration(os.environ["RELIABILITY_RECORD"]))
    if os.environ.get("RELIABILITY_FAULT"):
        rank, iteration = (int(v) for v in os.environ["RELIABILITY_FAULT"].split(":"))
        extra.append(RaiseOnOneWorker(rank, iteration))
    build_hooks = RetinaNetPluginTrainer.build_hooks
    RetinaNetPluginTrainer.build_hooks = lambda self: build_hooks(self) + extra


def main(args):
    instrument()
    return train_net.main(args)


if __name__ == "__main__":
    launch_from_args(main, default_argument_parser().parse_args())
