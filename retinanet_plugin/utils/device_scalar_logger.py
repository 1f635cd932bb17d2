"""Logging of per-step device scalars to Detectron2's ``EventStorage`` without waiting for the
GPU."""

from typing import List, Tuple

import torch
from torch import Tensor

from detectron2.utils.events import get_event_storage

MAX_PENDING = 16  # values still being copied; beyond this the oldest one is waited for


class DeviceScalarLogger:
    """``put(name, value)`` with a 0-dim tensor: on the CPU it is written at once; on a GPU it is
    copied to the host asynchronously and written (with the iteration it belongs to) by a later
    ``put`` once the copy is done, so the training step never synchronises the host for a metric.
    The last step's GPU values may stay unwritten."""

    def __init__(self):
        self._pending: List[Tuple[int, str, Tensor, "torch.cuda.Event"]] = []

    def put(self, name: str, value: Tensor) -> None:
        storage = get_event_storage()
        self._write_finished(storage)
        value = value.detach()
        if value.device.type != "cuda":
            storage.put_scalar(name, float(value))
            return
        # pinned destination: the copy is queued, not waited for
        host = value.to("cpu", non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        self._pending.append((storage.iter, name, host, copied))

    def _write_finished(self, storage) -> None:
        while len(self._pending) > MAX_PENDING:
            self._pending[0][3].synchronize()
            self._write(storage, self._pending.pop(0))
        still_pending = []
        for entry in self._pending:
            if entry[3].query():
                self._write(storage, entry)
            else:
                still_pending.append(entry)
        self._pending = still_pending

    @staticmethod
    def _write(storage, entry) -> None:
        iteration, name, host, _ = entry
        storage.put_scalar(name, float(host), cur_iter=iteration)
