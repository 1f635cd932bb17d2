"""One set of buffers for every worker before an evaluation.

DDP runs with ``broadcast_buffers=False`` (as Detectron2 does), so a BatchNorm's running statistics
(``MODEL.RESNETS.NORM`` or ``MODEL.RETINANET.NORM`` "BN"), and their weight averages
(``MODEL.RETINANET_PLUGIN.EMA``), follow each worker's own images and differ between workers,
while the main worker alone writes the checkpoints. Evaluating with them would score a mix of
models, none of which is the one saved. :func:`broadcast_buffers_from_main` gives every worker the
main worker's buffers first: the evaluation is of the checkpointed model, on every worker.
"""

from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
from detectron2.utils import comm

__all__ = ["broadcast_buffers_from_main"]


def broadcast_buffers_from_main(module: torch.nn.Module) -> None:
    """Every buffer of ``module`` (a model, its DDP wrapper, or a wrapper holding it) set to rank
    0's, in one broadcast per dtype and device; nothing with one worker. A collective: every
    worker must call it. Workers whose buffers differ in names, shapes, dtypes or devices get an
    error naming the first difference (rather than a broadcast that hangs or mixes values)."""
    if comm.get_world_size() == 1 or not (dist.is_available() and dist.is_initialized()):
        return
    _check_same_buffers(module)
    groups: Dict[Tuple[torch.dtype, torch.device], List[torch.Tensor]] = {}
    for buffer in module.buffers():
        groups.setdefault((buffer.dtype, buffer.device), []).append(buffer)
    for buffers in groups.values():
        flat = torch.cat([b.detach().reshape(-1) for b in buffers])
        dist.broadcast(flat, src=0)
        with torch.no_grad():
            for buffer, value in zip(buffers, flat.split([b.numel() for b in buffers])):
                buffer.copy_(value.view_as(buffer))


def _check_same_buffers(module: torch.nn.Module) -> None:
    layout = [
        f"{name} {tuple(b.shape)} {b.dtype} {b.device.type}" for name, b in module.named_buffers()
    ]
    layouts = comm.all_gather(layout)
    for rank, other in enumerate(layouts):
        if other != layouts[0]:
            first = next(
                (f"{a!r} against {b!r}" for a, b in zip(layouts[0], other) if a != b),
                f"{len(layouts[0])} buffers against {len(other)}",
            )
            raise RuntimeError(
                f"the workers' models differ in their buffers (rank 0 and rank {rank}: {first}); "
                "cannot give every worker the main worker's"
            )
