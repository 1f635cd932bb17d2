"""Starting the training processes of ``train_net.py``, in each of the ways PyTorch clusters run it.

- ``--num-gpus N``: Detectron2's ``launch`` spawns N workers on this machine (N CPU workers over
  GLOO when there is no GPU).
- ``--num-gpus N --num-machines M --machine-rank R --dist-url tcp://HOST:PORT``, on each of the M
  machines: Detectron2's ``launch`` spawns N workers on each, ranked R * N + local rank; HOST:PORT
  is a free port on machine 0, reachable from the others, the same on every machine.
- ``torchrun --nproc-per-node N [--nnodes M ...] train_net.py ...`` (or ``python -m
  torch.distributed.run``, or any launcher that sets the variables): torchrun's workers run the
  training themselves, nothing is spawned again; rank, world size, local rank and size and the
  rendezvous come from ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
  ``MASTER_ADDR`` and ``MASTER_PORT`` (:func:`ranks_from_environment`). ``--num-gpus``,
  ``--num-machines`` and ``--machine-rank`` must then be left out (or say the same), and
  ``--dist-url`` is not used.

In every mode the process group is GLOO without a GPU and NCCL with one (as Detectron2's
``launch``), Detectron2's ``comm`` works, its per-machine ("local") process group included, and
each worker calls ``main_func(*args)`` once. A worker that raises stops the job: Detectron2's
``launch`` and torchrun stop the other workers of its machine, and the workers of other machines
fail in their next collective ("Connection closed by peer"). What a worker must agree on with the
others before a collective (the checkpoint ``--resume`` loads) is agreed on explicitly, so that a
failure there names itself on every worker
(:meth:`retinanet_plugin.checkpoint.CheckedDetectionCheckpointer.resume_or_load`).
"""

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record
from detectron2.engine import launch
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.utils import comm

__all__ = [
    "DEFAULT_TIMEOUT",
    "ENVIRONMENT_VARIABLES",
    "EnvironmentRanks",
    "LaunchError",
    "launch_from_args",
    "ranks_from_environment",
    "run_in_environment_process_group",
]

logger = logging.getLogger(__name__)

# What torchrun sets for each worker (and what a launcher other than torchrun must set).
ENVIRONMENT_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)


class LaunchError(ValueError):
    """The command line or the environment cannot start the job as asked; says what to change."""


@dataclass(frozen=True)
class EnvironmentRanks:
    """This worker's place in a job started by torchrun (from :data:`ENVIRONMENT_VARIABLES`)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int

    @property
    def num_machines(self) -> int:
        return self.world_size // self.local_world_size

    @property
    def machine_rank(self) -> int:
        return self.rank // self.local_world_size


def ranks_from_environment(
    environ: Optional[Mapping[str, str]] = None,
) -> Optional[EnvironmentRanks]:
    """The ranks that torchrun gave this process (``environ``: ``os.environ``); None when neither
    ``RANK`` nor ``WORLD_SIZE`` is set (not started by torchrun). :class:`LaunchError` when some
    of the variables are missing or do not fit together."""
    environ = os.environ if environ is None else environ
    if "RANK" not in environ and "WORLD_SIZE" not in environ:
        return None
    missing = [name for name in ENVIRONMENT_VARIABLES if not environ.get(name)]
    if missing:
        raise LaunchError(
            f"RANK / WORLD_SIZE are set but not {', '.join(missing)}: start train_net.py with "
            "torchrun (which sets all of " + ", ".join(ENVIRONMENT_VARIABLES) + "), or set them "
            "all, or unset RANK and WORLD_SIZE to use --num-gpus / --num-machines"
        )
    values = {}
    for name in ENVIRONMENT_VARIABLES:
        if name == "MASTER_ADDR":
            continue
        try:
            values[name] = int(environ[name])
        except ValueError:
            raise LaunchError(f"{name}={environ[name]!r} is not an integer") from None
    ranks = EnvironmentRanks(
        rank=values["RANK"],
        world_size=values["WORLD_SIZE"],
        local_rank=values["LOCAL_RANK"],
        local_world_size=values["LOCAL_WORLD_SIZE"],
        master_addr=environ["MASTER_ADDR"],
        master_port=values["MASTER_PORT"],
    )
    problem = None
    if ranks.world_size < 1 or ranks.local_world_size < 1:
        problem = "WORLD_SIZE and LOCAL_WORLD_SIZE must be at least 1"
    elif not 0 <= ranks.rank < ranks.world_size:
        problem = "RANK must be in [0, WORLD_SIZE)"
    elif not 0 <= ranks.local_rank < ranks.local_world_size:
        problem = "LOCAL_RANK must be in [0, LOCAL_WORLD_SIZE)"
    elif ranks.world_size % ranks.local_world_size or (
        ranks.rank % ranks.local_world_size != ranks.local_rank
    ):
        # Detectron2's local process group takes machine m to hold ranks m * n ... m * n + n - 1
        problem = (
            "every machine must run the same number of workers (torchrun --nproc-per-node N on "
            "each), ranked machine by machine (RANK = machine rank * LOCAL_WORLD_SIZE + LOCAL_RANK)"
        )
    if problem:
        shown = ", ".join(f"{name}={environ[name]}" for name in ENVIRONMENT_VARIABLES)
        raise LaunchError(f"{problem}; the environment has {shown}")
    return ranks


def _check_flags_fit_environment(args: Any, ranks: EnvironmentRanks) -> None:
    """Under torchrun the environment decides; a ``--num-gpus``, ``--num-machines`` or
    ``--machine-rank`` other than its default must say the same, or the job is not the one asked
    for."""
    given = {
        "--num-gpus": (getattr(args, "num_gpus", 1), ranks.local_world_size, 1),
        "--num-machines": (getattr(args, "num_machines", 1), ranks.num_machines, 1),
        "--machine-rank": (getattr(args, "machine_rank", 0), ranks.machine_rank, 0),
    }
    wrong = [
        f"{flag} {value} (torchrun: {expected})"
        for flag, (value, expected, default) in given.items()
        if value not in (default, expected)
    ]
    if wrong:
        raise LaunchError(
            f"started by torchrun (RANK={ranks.rank}, WORLD_SIZE={ranks.world_size}, "
            f"LOCAL_WORLD_SIZE={ranks.local_world_size}) but the command line asks for "
            f"{', '.join(wrong)}: torchrun's --nnodes and --nproc-per-node set the workers, leave "
            "these flags out"
        )


def _check_launch_flags(args: Any) -> None:
    """Clear errors for the multi-machine flags of Detectron2's ``launch`` (which would fail
    later with an assertion, or wait for machines that never come)."""
    num_machines = args.num_machines
    if num_machines < 1 or not 0 <= args.machine_rank < num_machines:
        raise LaunchError(
            f"--machine-rank {args.machine_rank} must be in [0, --num-machines {num_machines})"
        )
    if num_machines > 1 and (not args.dist_url or args.dist_url == "auto"):
        raise LaunchError(
            f"--num-machines {num_machines} needs --dist-url tcp://HOST:PORT, the same on every "
            "machine, HOST being machine 0's address (reachable from the others) and PORT a free "
            "port there; 'auto' only picks a port on one machine"
        )


def run_in_environment_process_group(
    main_func: Callable[..., Any],
    ranks: EnvironmentRanks,
    args: Sequence[Any] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> Any:
    """``main_func(*args)`` in this process (no spawn), as one worker of the job ``ranks``
    describes: the default process group from the environment (``env://``, the store torchrun
    shares), Detectron2's per-machine process group, the GPU of ``LOCAL_RANK`` when there are
    GPUs. A world of one runs ``main_func`` without a process group, as Detectron2's ``launch``."""
    if ranks.world_size == 1:
        return main_func(*args)
    has_gpu = torch.cuda.is_available()
    if has_gpu:
        if ranks.local_world_size > torch.cuda.device_count():
            raise LaunchError(
                f"LOCAL_WORLD_SIZE={ranks.local_world_size} workers on this machine but only "
                f"{torch.cuda.device_count()} GPUs are visible"
            )
        torch.cuda.set_device(ranks.local_rank)
    try:
        dist.init_process_group(
            backend="NCCL" if has_gpu else "GLOO",
            init_method="env://",
            world_size=ranks.world_size,
            rank=ranks.rank,
            timeout=timeout,
        )
    except Exception:
        logger.error(f"Process group from the environment: {ranks}")
        raise
    comm.create_local_process_group(ranks.local_world_size)
    # as Detectron2's launch: a barrier right away, against a timeout after init_process_group
    comm.synchronize()
    result = main_func(*args)
    dist.destroy_process_group()
    return result


def launch_from_args(
    main_func: Callable[..., Any], args: Any, timeout: timedelta = DEFAULT_TIMEOUT
) -> Any:
    """Run ``main_func(args)`` on every worker of the job that the command line ``args``
    (Detectron2's ``default_argument_parser``: ``--num-gpus``, ``--num-machines``,
    ``--machine-rank``, ``--dist-url``) or torchrun's environment describes; see the module
    docstring."""
    ranks = ranks_from_environment()
    if ranks is None:
        _check_launch_flags(args)
        return launch(
            main_func,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            timeout=timeout,
        )
    _check_flags_fit_environment(args, ranks)
    # record: torchrun's summary of a failed job then shows the worker's exception
    return record(run_in_environment_process_group)(main_func, ranks, args=(args,), timeout=timeout)
