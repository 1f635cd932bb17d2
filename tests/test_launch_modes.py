"""train_net.py in each launch mode, on the CPU over GLOO: one machine of two workers (Detectron2's
launch spawning them), two "machines" of one worker each on this one (Detectron2's launch with
--num-machines 2, meeting on the loopback), and torchrun --nproc-per-node 2 (ranks from the
environment, nothing spawned again). The same two-worker job gives the same loss curve in every
mode (within the tolerance of tests/test_faults.py's two-worker test), Detectron2's comm holds the
right ranks, and a --resume that fails on one rank stops every rank, promptly, with that error.
In-process: the workers' agreement on what --resume loads
(one rank of two, the other's answers scripted), and the ranks and flags of each launch mode.

Runs through tests/instrumented_train_net.py with the settings of tests/test_faults.py's two-worker
test (tiny R18, 128 px images, 8 iterations), both from tests/launch_helpers.py, which starts the
launches with bounded waits.
"""

import shutil

import pytest

import launch_helpers
from launch_helpers import (
    CURVE_ITERATIONS,
    EARLY_ITERATIONS,
    EARLY_RTOL,
    LATE_RTOL,
    TWO_WORKER_CURVE_RUN,
    machine_commands,
    relative_loss_differences,
    run_launch,
    spawn_command,
    torchrun_command,
)

fixed_size_dataset = launch_helpers.fixed_size_dataset  # the fixture (32 images of 128x128)


# --------------------------------------------------------------------------------------------------
# The launches (end to end, slow)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_machine_two_workers(tmp_path_factory, fixed_size_dataset):
    """The reference: Detectron2's launch spawning 2 workers on one machine (test_faults' run)."""
    run = run_launch(
        spawn_command(2), tmp_path_factory.mktemp("spawn"), fixed_size_dataset, TWO_WORKER_CURVE_RUN
    )
    assert run.returncodes == [0], run.tail()
    assert [r["iteration"] for r in run.curve] == CURVE_ITERATIONS, run.tail()
    print(f"1 machine x 2 spawned workers: {run.seconds:.1f} s ({run.cpu_seconds:.0f} s CPU)")
    return run


def _same_curve(run, reference, label):
    assert [r["iteration"] for r in run.curve] == CURVE_ITERATIONS, run.tail()
    differences = relative_loss_differences(reference.curve, run.curve)
    print(
        f"relative loss differences, {label} vs 1 machine x 2 workers ({run.seconds:.1f} s, "
        f"{run.cpu_seconds:.0f} s CPU):",
        ["%.2e" % d for d in differences],
    )
    assert max(differences[:EARLY_ITERATIONS]) <= EARLY_RTOL, differences
    assert max(differences) <= LATE_RTOL, differences


def _local_layout(run):
    """rank -> (world size, local rank, local size), from Detectron2's comm in each worker."""
    return {
        rank: (row["world_size"], row["local_rank"], row["local_size"])
        for rank, row in run.ranks.items()
    }


@pytest.mark.slow
def test_two_machines_of_one_worker_give_the_loss_curve_of_one_machine_with_two(
    tmp_path, fixed_size_dataset, one_machine_two_workers
):
    run = run_launch(machine_commands(2), tmp_path, fixed_size_dataset, TWO_WORKER_CURVE_RUN)
    assert run.returncodes == [0, 0], run.tail()
    assert "World size: 2" in run.logs[0], run.tail()
    # each "machine" holds one worker: local rank 0 of 1 on both, global ranks 0 and 1
    assert _local_layout(run) == {0: (2, 0, 1), 1: (2, 0, 1)}
    assert _local_layout(one_machine_two_workers) == {0: (2, 0, 2), 1: (2, 1, 2)}
    _same_curve(run, one_machine_two_workers, "2 machines x 1 worker")


@pytest.mark.slow
def test_torchrun_gives_the_loss_curve_of_the_spawned_launch(
    tmp_path, fixed_size_dataset, one_machine_two_workers
):
    run = run_launch(torchrun_command(2), tmp_path, fixed_size_dataset, TWO_WORKER_CURVE_RUN)
    assert run.returncodes == [0], run.tail()
    assert "World size: 2" in run.log, run.tail()
    assert _local_layout(run) == {0: (2, 0, 2), 1: (2, 1, 2)}
    for rank, row in run.ranks.items():
        # torchrun's own workers run the training: no second spawn below them
        assert row["ppid"] == run.pids[0] and not row["spawned_by_multiprocessing"], row
        assert row["environment"]["RANK"] == str(rank) and row["environment"]["TORCHELASTIC_RUN_ID"]
    assert len({row["pid"] for row in run.ranks.values()}) == 2
    _same_curve(run, one_machine_two_workers, "torchrun x 2")


LAUNCHERS = {"two machines": machine_commands, "torchrun": torchrun_command}
RESUME_FAILURE = "--resume failed on 1 of 2 workers, so every worker stops"
INJECTED = "injected fault: rank 1 cannot read"


# End to end in the launch mode where a worker would otherwise hang (the other machine waits in a
# collective); every launch mode reaches the same agreement in resume_or_load (the in-process tests
# below), and one end-to-end case keeps CI within its time (the torchrun case took 21 s more).
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["two machines"])
def test_resume_failing_on_one_rank_stops_every_rank_with_its_error(
    tmp_path, fixed_size_dataset, one_machine_two_workers, mode
):
    """Rank 1 reads no checkpoint, so its --resume fallback finds none; rank 0 could resume. Every
    rank must stop with rank 1's error, not wait for it in Detectron2's collective load (or fail
    there with a connection error that names nothing)."""
    out = tmp_path / "resumed"
    out.mkdir()
    for name in ("model_final.pth", "last_checkpoint"):
        shutil.copy(one_machine_two_workers.out_dir / name, out / name)
    run = run_launch(
        LAUNCHERS[mode](2, "--resume"),
        out,
        fixed_size_dataset,
        TWO_WORKER_CURVE_RUN + ["SOLVER.MAX_ITER", "10"],  # a resume would train iterations 8 and 9
        timeout=180,
        RELIABILITY_RESUME_FAULT="1",
    )
    print(
        f"{mode}: the failed resume ended after {run.seconds:.1f} s ({run.cpu_seconds:.0f} s CPU)"
    )
    assert all(code != 0 for code in run.returncodes), run.tail()
    assert not run.curve, "no iteration may run"
    if mode == "two machines":  # each machine's own output names rank 1's error
        for rank, log in enumerate(run.logs):
            assert f"CheckpointFailedOnWorkerError: {RESUME_FAILURE} (rank {rank} here)" in log, (
                run.tail()
            )
            assert f"rank 1: CheckpointReadError: --resume: no readable checkpoint in {out}" in log
            assert INJECTED in log
    else:  # torchrun stops the job at the first failed worker and names its error
        assert f"CheckpointFailedOnWorkerError: {RESUME_FAILURE}" in run.log, run.tail()
        assert INJECTED in run.log and "Root Cause (first observed failure)" in run.log


# --------------------------------------------------------------------------------------------------
# The workers' agreement on what --resume loads (in-process: rank 0 of 2, rank 1's answers
# scripted; and one worker, with no collective)
# --------------------------------------------------------------------------------------------------


class RankZeroOfTwo:
    """Detectron2's comm as rank 0 of 2 workers sees it; rank 1's part of each all_gather comes
    from ``answers``, in order (``(error text or None, payload)``, as the agreement sends); what
    rank 0 sent is kept in ``sent``."""

    def __init__(self, *answers):
        self.answers, self.sent = list(answers), []

    def get_world_size(self):
        return 2

    def get_rank(self):
        return 0

    def is_main_process(self):
        return True

    def all_gather(self, data, group=None):
        self.sent.append(data)
        return [data, self.answers.pop(0)]


@pytest.fixture
def saved_checkpoint(tmp_path):
    """A checkpointer whose folder holds a tagged training checkpoint (iteration 3) of a small
    model, whose weights have changed since."""
    import torch

    from retinanet_plugin.checkpoint import CheckedDetectionCheckpointer

    model = torch.nn.Linear(3, 2)
    checkpointer = CheckedDetectionCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000003", iteration=3)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    return checkpointer, saved


def _resume_as_rank_zero(monkeypatch, checkpointer, comm, path="", resume=True):
    from retinanet_plugin.checkpoint import checked_checkpointer, resume as resume_module

    monkeypatch.setattr(resume_module, "comm", comm)
    monkeypatch.setattr(checked_checkpointer, "comm", comm)
    return checkpointer.resume_or_load(path, resume=resume)


def _count_reads(monkeypatch):
    """The files that the checkpointer reads from now on, in order."""
    from retinanet_plugin.checkpoint import checked_checkpointer

    read, reads = checked_checkpointer.read_checkpoint_file, []
    monkeypatch.setattr(
        checked_checkpointer, "read_checkpoint_file", lambda f: reads.append(f) or read(f)
    )
    return reads


def _unchanged(checkpointer, saved):
    import torch

    return not torch.equal(checkpointer.model.weight, saved["weight"])


def test_resume_agreement_loads_when_every_worker_can(monkeypatch, saved_checkpoint):
    import torch

    checkpointer, saved = saved_checkpoint
    reads = _count_reads(monkeypatch)
    comm = RankZeroOfTwo((None, "model_0000003.pth"), (None, None))
    loaded = _resume_as_rank_zero(monkeypatch, checkpointer, comm)
    assert loaded["iteration"] == 3 and torch.equal(checkpointer.model.weight, saved["weight"])
    # one collective to agree, one to confirm the load; the file is read once
    assert comm.sent == [(None, "model_0000003.pth"), (None, None)]
    assert reads == [checkpointer.get_checkpoint_file()]


def test_resume_agreement_stops_this_worker_when_another_has_no_readable_checkpoint(
    monkeypatch, saved_checkpoint
):
    from retinanet_plugin.checkpoint.resume import CheckpointFailedOnWorkerError

    checkpointer, saved = saved_checkpoint
    theirs = "CheckpointReadError: --resume: no readable checkpoint in /elsewhere: damaged"
    comm = RankZeroOfTwo((theirs, None))
    with pytest.raises(CheckpointFailedOnWorkerError) as raised:
        _resume_as_rank_zero(monkeypatch, checkpointer, comm)
    message = str(raised.value)
    assert "--resume failed on 1 of 2 workers, so every worker stops (rank 0 here)" in message
    assert f"rank 1: {theirs}" in message
    assert comm.sent == [(None, "model_0000003.pth")]  # and no other collective
    assert _unchanged(checkpointer, saved)


def test_resume_agreement_tells_the_others_when_this_worker_cannot_read(
    monkeypatch, saved_checkpoint
):
    from retinanet_plugin.checkpoint import CheckpointReadError
    from retinanet_plugin.checkpoint.resume import CheckpointFailedOnWorkerError

    checkpointer, saved = saved_checkpoint
    with open(checkpointer.get_checkpoint_file(), "r+b") as f:
        f.truncate(100)
    comm = RankZeroOfTwo((None, "model_0000003.pth"))
    with pytest.raises(
        CheckpointFailedOnWorkerError, match="rank 0: CheckpointReadError"
    ) as raised:
        _resume_as_rank_zero(monkeypatch, checkpointer, comm)
    assert isinstance(raised.value.__cause__, CheckpointReadError)
    assert len(comm.sent) == 1 and "no readable checkpoint" in comm.sent[0][0]
    assert _unchanged(checkpointer, saved)


def test_resume_agreement_stops_when_a_worker_finds_no_last_checkpoint(
    monkeypatch, saved_checkpoint
):
    """Without the agreement, that worker would train from scratch while this one waits in a
    collective that the other never enters."""
    from retinanet_plugin.checkpoint.resume import CheckpointFailedOnWorkerError

    checkpointer, saved = saved_checkpoint
    comm = RankZeroOfTwo((None, None))
    with pytest.raises(CheckpointFailedOnWorkerError, match=r"ranks \[1\] find no last_checkpoint"):
        _resume_as_rank_zero(monkeypatch, checkpointer, comm)
    assert _unchanged(checkpointer, saved)


def test_weights_agreement_stops_when_model_weights_are_missing_here(monkeypatch, tmp_path):
    import torch

    from retinanet_plugin.checkpoint import CheckedDetectionCheckpointer, CheckpointNotFoundError
    from retinanet_plugin.checkpoint.resume import CheckpointFailedOnWorkerError

    checkpointer = CheckedDetectionCheckpointer(torch.nn.Linear(3, 2), str(tmp_path))
    missing = str(tmp_path / "nowhere.pth")
    with pytest.raises(CheckpointFailedOnWorkerError, match="loading MODEL.WEIGHTS") as raised:
        _resume_as_rank_zero(
            monkeypatch, checkpointer, RankZeroOfTwo((None, None)), path=missing, resume=False
        )
    assert isinstance(raised.value.__cause__, CheckpointNotFoundError)


class OneWorker(RankZeroOfTwo):
    """Detectron2's comm with one worker, where a collective would be a mistake."""

    def get_world_size(self):
        return 1

    def all_gather(self, data, group=None):
        pytest.fail("one worker needs no collective")


def test_one_worker_resumes_the_same_way_without_a_collective(monkeypatch, saved_checkpoint):
    import torch

    checkpointer, saved = saved_checkpoint
    reads = _count_reads(monkeypatch)
    loaded = _resume_as_rank_zero(monkeypatch, checkpointer, OneWorker())
    assert loaded["iteration"] == 3 and torch.equal(checkpointer.model.weight, saved["weight"])
    assert reads == [checkpointer.get_checkpoint_file()]


def test_one_worker_raises_its_own_error(monkeypatch, saved_checkpoint, tmp_path):
    from retinanet_plugin.checkpoint import CheckpointNotFoundError, CheckpointReadError
    from retinanet_plugin.checkpoint.resume import CheckpointFailedOnWorkerError

    checkpointer, saved = saved_checkpoint
    with open(checkpointer.get_checkpoint_file(), "r+b") as f:
        f.truncate(100)
    with pytest.raises(CheckpointReadError, match="--resume: no readable checkpoint") as raised:
        _resume_as_rank_zero(monkeypatch, checkpointer, OneWorker())
    assert not isinstance(raised.value, CheckpointFailedOnWorkerError)
    assert _unchanged(checkpointer, saved)
    missing = str(tmp_path / "nowhere.pth")
    with pytest.raises(CheckpointNotFoundError):
        _resume_as_rank_zero(monkeypatch, checkpointer, OneWorker(), path=missing, resume=False)


# --------------------------------------------------------------------------------------------------
# Ranks from torchrun's environment, and the launch flags (in-process)
# --------------------------------------------------------------------------------------------------

TORCHRUN_ENV = {
    "RANK": "3",
    "WORLD_SIZE": "4",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "node0",
    "MASTER_PORT": "29500",
}


def _must_not_start(*args, **kwargs):
    pytest.fail("the job must not start")


def _torchrun_environment(monkeypatch, **changes):
    for name, value in {**TORCHRUN_ENV, **changes}.items():
        monkeypatch.setenv(name, value)


def _no_torchrun_environment(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)


def _args(**overrides):
    import argparse

    values = dict(num_gpus=1, num_machines=1, machine_rank=0, dist_url="auto")
    values.update(overrides)
    return argparse.Namespace(**values)


def test_ranks_from_the_torchrun_environment():
    from retinanet_plugin.engine.launching import EnvironmentRanks, ranks_from_environment

    assert ranks_from_environment({"PATH": "/bin"}) is None
    ranks = ranks_from_environment(TORCHRUN_ENV)
    assert ranks == EnvironmentRanks(3, 4, 1, 2, "node0", 29500)
    assert (ranks.num_machines, ranks.machine_rank) == (2, 1)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"LOCAL_WORLD_SIZE": None}, "but not LOCAL_WORLD_SIZE"),
        ({"RANK": "x"}, "RANK='x' is not an integer"),
        ({"RANK": "4"}, "RANK must be in"),
        ({"LOCAL_RANK": "0"}, "ranked machine by machine"),
        ({"WORLD_SIZE": "3", "RANK": "1", "LOCAL_RANK": "1"}, "the same number of workers"),
    ],
)
def test_an_environment_that_does_not_fit_is_refused(change, message):
    from retinanet_plugin.engine.launching import LaunchError, ranks_from_environment

    env = {k: v for k, v in {**TORCHRUN_ENV, **change}.items() if v is not None}
    with pytest.raises(LaunchError, match=message):
        ranks_from_environment(env)


def test_flags_that_contradict_torchrun_are_refused(monkeypatch):
    from retinanet_plugin.engine import launching

    _torchrun_environment(monkeypatch)  # rank 3 of 4: machine 1 of 2, 2 workers each
    monkeypatch.setattr(launching, "run_in_environment_process_group", _must_not_start)
    for args in (_args(num_gpus=8), _args(num_machines=3), _args(num_machines=2, machine_rank=2)):
        with pytest.raises(launching.LaunchError, match="started by torchrun"):
            launching.launch_from_args(_must_not_start, args)


@pytest.mark.parametrize(
    "args, message",
    [
        (_args(num_machines=2, dist_url="auto"), "needs --dist-url tcp://HOST:PORT"),
        (_args(num_machines=2, machine_rank=2, dist_url="tcp://h:1"), r"must be in \[0, "),
    ],
)
def test_multi_machine_flags_that_cannot_work_are_refused(monkeypatch, args, message):
    from retinanet_plugin.engine import launching

    _no_torchrun_environment(monkeypatch)
    monkeypatch.setattr(launching, "launch", _must_not_start)
    with pytest.raises(launching.LaunchError, match=message):
        launching.launch_from_args(_must_not_start, args)


def test_torchrun_with_one_worker_runs_main_here_without_a_process_group(monkeypatch):
    import os

    import torch.distributed as dist

    from retinanet_plugin.engine import launching

    _torchrun_environment(
        monkeypatch, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1"
    )
    ran = launching.launch_from_args(lambda a: (os.getpid(), dist.is_initialized(), a), _args())
    assert ran[:2] == (os.getpid(), False) and ran[2].num_gpus == 1
