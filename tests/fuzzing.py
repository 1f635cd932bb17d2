"""The machinery of the fuzz tests (``test_fuzz_input.py``, ``test_fuzz_voc.py``): seeded cases
under a per-case time limit and a per-family CPU-time budget, and the small model the accepted
inputs go through.

A family's cases are drawn from ``random.Random(f"{SEED}-{family}-{index}")``, so a failure names a
reproducible case. A family stops at its case count or its budget, whichever comes first, and
prints how many it tried.
"""

import collections
import contextlib
import faulthandler
import os
import random
import signal
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from detectron2.utils.events import EventStorage

from retinanet_plugin import model_zoo

SEED = 1402
CASE_TIMEOUT_S = 15.0  # one case longer than this is a hang
IMAGE_SIZE = (48, 64)
NUM_CLASSES = 2


@contextlib.contextmanager
def one_thread():
    """torch on one thread (the cases are small; a second pytest worker may share the machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class CaseTimeout(BaseException):
    """Not an Exception: no ``except Exception`` in the code under test may take a timeout for its
    own error."""


HANG_TRACEBACK = (
    Path(os.environ.get("TMPDIR", "/tmp")) / f"retinanet_plugin_fuzz_hang_{os.getpid()}.txt"
)


@contextlib.contextmanager
def time_limit(seconds):
    """CaseTimeout after ``seconds`` (SIGALRM, which interrupts Python code); a hang inside C code,
    which SIGALRM cannot interrupt, makes faulthandler write every thread's stack to HANG_TRACEBACK
    and end the process after 3 x ``seconds``: the run fails instead of hanging."""

    def on_alarm(signum, frame):
        raise CaseTimeout(f"the case ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    with open(HANG_TRACEBACK, "w") as hang_file:
        faulthandler.dump_traceback_later(3 * seconds, exit=True, file=hang_file)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            faulthandler.cancel_dump_traceback_later()


class Fuzzer:
    """Runs the cases of one family and keeps the outcomes and the failures."""

    def __init__(self, family, cases, budget_s):
        """``cases``: how many at most; ``budget_s``: CPU seconds at most (fewer than a quarter of
        ``cases`` in it means the machine starved the test, and the family fails)."""
        self.family = family
        self.cases, self.budget_s = cases, budget_s
        self.outcomes = collections.Counter()
        self.failures = []
        self.tried = 0

    def run(self, make_and_check):
        # the budget is this process's CPU time, not the wall clock: with other work on the machine
        # (another test file in a second pytest worker) the same cases still fit in it
        start, cpu_start = time.monotonic(), time.process_time()
        for index in range(self.cases):
            if time.process_time() - cpu_start > self.budget_s:
                break
            rng = random.Random(f"{SEED}-{self.family}-{index}")
            self.tried += 1
            case = {
                "description": "?"
            }  # make_and_check names the case here as soon as it has made it
            try:
                with time_limit(CASE_TIMEOUT_S):
                    outcome = make_and_check(rng, index, case)
                self.outcomes[outcome] += 1
            except CaseTimeout as e:
                self.failures.append(f"case {index} ({case['description']}): hang: {e}")
            except AssertionError as e:
                self.failures.append(f"case {index} ({case['description']}): {e}")
            except Exception as e:  # noqa: BLE001 - anything else is what this test looks for
                where = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-6:])
                self.failures.append(
                    f"case {index} ({case['description']}): unexpected {type(e).__name__}: "
                    f"{str(e)[:300]}\n{where}"
                )
        self.seconds = time.monotonic() - start
        if HANG_TRACEBACK.exists() and HANG_TRACEBACK.stat().st_size == 0:
            HANG_TRACEBACK.unlink()

    def report(self, capsys):
        with capsys.disabled():
            print(
                f"\n[fuzz] {self.family}: {self.tried} cases in {self.seconds:.1f} s (seed "
                f"{SEED}); outcomes: "
                + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
            )
        shown = "\n\n".join(self.failures[:8])
        assert not self.failures, (
            f"{len(self.failures)} of {self.tried} {self.family} cases failed:\n{shown}"
        )
        assert self.tried >= self.cases // 4, (
            f"only {self.tried} {self.family} cases ran in the time budget"
        )
        assert len(self.outcomes) >= 2, (
            f"every {self.family} case ended the same way: {dict(self.outcomes)}"
        )


def junk(rng):
    return rng.choice(
        [
            None,
            -1,
            0,
            1,
            7,
            2**31,
            2**64,
            1e308,
            -1e308,
            float("nan"),
            float("inf"),
            0.5,
            -3.5,
            "",
            "x",
            "12",
            [],
            [1],
            [1, 2, 3, 4],
            {},
            {"a": 1},
            True,
            False,
        ]
    )


def assert_names(error, *paths):
    message = str(error)
    assert any(str(p) in message for p in paths), (
        f"{type(error).__name__} does not name the file ({', '.join(map(str, paths))}): "
        f"{message[:500]}"
    )


def fuzz_cfg(out_dir):
    cfg = model_zoo.get_config("synthetic/retinanet_R18_synthetic.yaml")
    cfg.merge_from_list(
        [
            "MODEL.RETINANET.NUM_CLASSES",
            str(NUM_CLASSES),
            "MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL",
            "reference",
            "INPUT.MIN_SIZE_TRAIN",
            "(48,)",
            "INPUT.MAX_SIZE_TRAIN",
            "96",
            "INPUT.MIN_SIZE_TEST",
            "48",
            "INPUT.MAX_SIZE_TEST",
            "96",
            "DATALOADER.NUM_WORKERS",
            "0",
            "OUTPUT_DIR",
            str(out_dir),
        ]
    )
    return cfg


def train_forward(model, batch):
    """A training forward: what the trainer does with a mapped batch. The losses must be finite."""
    with torch.no_grad(), EventStorage(0):
        losses = model(batch)
    for name, value in losses.items():
        assert torch.isfinite(value).all(), f"{name} is {value} on accepted input"


def image_pixels(seed):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(*IMAGE_SIZE, 3), dtype=np.uint8)
    pixels[10:30, 12:40] = (200, 40, 90)
    return pixels
