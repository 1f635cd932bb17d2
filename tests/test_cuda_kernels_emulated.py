"""The CUDA kernels of the focal losses, executed on the CPU by a host emulation of CUDA.

``tests/cuda_emulation/emulated_kernels.cpp`` compiles
``retinanet_plugin/csrc/cuda/focal_loss_kernels.cuh`` (the source nvcc compiles for the GPU) as host
code over ``cuda_emulator.h``: every (block, thread) of each launch runs, ``__syncthreads`` waits
for the whole block and warp shuffles exchange values across 32 lanes. The tests compare its results
with the CPU kernels (``torch.ops.retinanet_plugin.*`` on CPU tensors), check that every (row,
column) is visited exactly once, that the reduced forward's partial-sum buffer is exactly the grid,
and that the vectorised, column-major and grid-stride paths are the ones taken. The emulation's math
is the host's libm (the GPU build uses --use_fast_math), so values agree to float rounding, not bit
for bit.
"""

import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import retinanet_plugin.layers  # noqa: F401  (registers the ops)

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "retinanet_plugin" / "csrc"
EMULATION = Path(__file__).resolve().parent / "cuda_emulation"
SOURCES = [
    EMULATION / "emulated_kernels.cpp",
    EMULATION / "cuda_emulator.h",
    CSRC / "loss_elements.h",
    CSRC / "loss_kind.h",
]
SOURCES += sorted((CSRC / "cuda").glob("*.h")) + sorted((CSRC / "cuda").glob("*.cuh"))

KINDS = {"sigmoid_focal": 0, "quality_focal": 1, "dense_focal": 2}  # LossKind
LOGITS_TYPES = {
    torch.float32: 0,
    torch.float64: 1,
    torch.float16: 2,
    torch.bfloat16: 3,
}  # LogitsType
OPS = {"none": 0, "sum": 1, "mean": 2, "backward": 3}
THREADS = 256


class EmuCall(ctypes.Structure):
    _fields_ = [
        ("op", ctypes.c_int64),
        ("kind", ctypes.c_int64),
        ("logits_type", ctypes.c_int64),
        ("logits", ctypes.c_void_p),
        ("rows", ctypes.c_int64),
        ("cols", ctypes.c_int64),
        ("row_stride", ctypes.c_int64),
        ("col_stride", ctypes.c_int64),
        ("labels", ctypes.c_void_p),
        ("labels_int32", ctypes.c_int64),
        ("label_stride", ctypes.c_int64),
        ("gamma", ctypes.c_double),
        ("weight_positive", ctypes.c_double),
        ("weight_negative", ctypes.c_double),
        ("gamma_is_two", ctypes.c_int64),
        ("beta", ctypes.c_double),
        ("quality", ctypes.c_void_p),
        ("quality_stride", ctypes.c_int64),
        ("targets", ctypes.c_void_p),
        ("targets_row_stride", ctypes.c_int64),
        ("targets_col_stride", ctypes.c_int64),
        ("normalizer", ctypes.c_void_p),
        ("divisor", ctypes.c_double),
        ("multiprocessors", ctypes.c_int64),
        ("blocks_per_multiprocessor", ctypes.c_int64),
        ("out", ctypes.c_void_p),
        ("partial_sums", ctypes.c_void_p),
        ("partial_counts", ctypes.c_void_p),
        ("partial_capacity", ctypes.c_int64),
        ("grad", ctypes.c_void_p),
        ("grad_elementwise", ctypes.c_int64),
        ("grad_row_stride", ctypes.c_int64),
        ("grad_col_stride", ctypes.c_int64),
        ("valid_rows", ctypes.c_void_p),
        ("visits", ctypes.c_void_p),
        ("schedule", ctypes.c_int64),
    ]


class EmuResult(ctypes.Structure):
    _fields_ = [
        ("status", ctypes.c_int64),
        ("launches", ctypes.c_int64),
        ("grids", ctypes.c_int64 * 4),
        ("reduce_grid_size", ctypes.c_int64),
        ("vector_width", ctypes.c_int64),
        ("threads_per_row", ctypes.c_int64),
        ("column_major", ctypes.c_int64),
        ("assertion_count", ctypes.c_int64),
        ("visits_out_of_range", ctypes.c_int64),
        ("assertion", ctypes.c_char * 256),
        ("error", ctypes.c_char * 256),
    ]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler to build the CUDA kernels' host emulation")
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES)).hexdigest()[:16]
    cache = REPO / "build" / "cuda_emulation"
    library = cache / f"emulated_kernels_{digest}.so"
    if not library.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = tmp_path_factory.mktemp("emulation") / library.name
        cmd = [
            compiler,
            "-std=c++20",
            "-O1",
            "-shared",
            "-fPIC",
            "-Wall",
            "-Werror",
            "-Wno-unknown-pragmas",
            f"-I{CSRC}",
            f"-I{EMULATION}",
            str(EMULATION / "emulated_kernels.cpp"),
            "-o",
            str(partial),
        ]
        build = subprocess.run(cmd, capture_output=True, text=True)
        assert build.returncode == 0, f"building the emulation failed:\n{build.stderr[-4000:]}"
        os.replace(partial, library)
    lib = ctypes.CDLL(str(library))
    lib.emu_run.argtypes = [ctypes.POINTER(EmuCall), ctypes.POINTER(EmuResult)]
    lib.emu_run.restype = ctypes.c_int
    return lib


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _ptr(t):
    return None if t is None else t.data_ptr()


class Case:
    """One problem: logits (any layout), its targets, the loss constants, and the emulated 'device'
    size."""

    def __init__(
        self,
        kind="sigmoid_focal",
        rows=37,
        cols=80,
        dtype=torch.float32,
        layout="contiguous",
        label_dtype=torch.int64,
        gamma=2.0,
        alpha=0.25,
        beta=2.0,
        normalizer=None,
        divisor=1.0,
        multiprocessors=4,
        blocks_per_multiprocessor=2,
        targets_layout="contiguous",
        quality_stride=1,
        seed=0,
    ):
        g = torch.Generator().manual_seed(seed)
        self.kind, self.dtype, self.gamma, self.alpha, self.beta = kind, dtype, gamma, alpha, beta
        self.multiprocessors, self.blocks_per_multiprocessor = (
            multiprocessors,
            blocks_per_multiprocessor,
        )
        base = (torch.randn(rows, cols, generator=g, dtype=torch.float64) * 3).to(dtype)
        if layout == "contiguous":
            self.logits = base
        elif layout == "column_major":  # e.g. the transpose of a [K, N] tensor
            self.logits = base.t().contiguous().t()
        elif layout == "strided":  # every other column of a wider tensor: neither layout
            wide = torch.zeros(rows, 2 * cols, dtype=dtype)
            wide[:, ::2] = base
            self.logits = wide[:, ::2]
        elif layout == "row_padded":  # rows of a wider tensor: unit column stride, a row stride > K
            wide = torch.zeros(rows, cols + 4, dtype=dtype)
            wide[:, :cols] = base
            self.logits = wide[:, :cols]
        elif layout == "offset":  # starts one element into its storage: not 16-byte aligned
            wide = torch.zeros(rows, cols + 8, dtype=dtype)
            wide[:, 1 : cols + 1] = base
            self.logits = wide[:, 1 : cols + 1]
        u = torch.rand(rows, generator=g)
        labels = torch.full((rows,), cols, dtype=torch.int64)
        positive = u < 0.4
        labels[positive] = torch.randint(0, max(cols, 1), (rows,), generator=g)[positive]
        labels[u > 0.8] = -1
        self.labels = labels.to(label_dtype)
        self.quality = torch.rand(rows, generator=g, dtype=torch.float64).to(_acc(dtype))
        targets = (torch.rand(rows, cols, generator=g) < 0.2).to(torch.float64)
        # soft rows
        targets[: rows // 3] = torch.rand(rows // 3, cols, generator=g, dtype=torch.float64)
        self.targets = targets.to(_acc(dtype))
        if targets_layout == "offset":  # dense targets one element into their storage
            wide = torch.zeros(rows, cols + 8, dtype=_acc(dtype))
            wide[:, 1 : cols + 1] = self.targets
            self.targets = wide[:, 1 : cols + 1]
        elif targets_layout == "column_major":
            self.targets = self.targets.t().contiguous().t()
        if quality_stride > 1:
            self.quality = self.quality.repeat_interleave(quality_stride)[::quality_stride]
        self.normalizer = (
            None if normalizer is None else torch.tensor(float(normalizer), dtype=_acc(dtype))
        )
        self.divisor = divisor

    # --- the CPU kernels, the reference
    def cpu(self, reduction, grad=None):
        ops = torch.ops.retinanet_plugin
        x = self.logits
        if self.kind == "sigmoid_focal":
            args = (
                x,
                self.labels,
                self.normalizer,
                self.gamma,
                self.alpha,
                reduction,
                self.divisor,
            )
            return (
                ops.sigmoid_focal_loss(*args)
                if grad is None
                else ops.sigmoid_focal_loss_backward(grad, *args)
            )
        if self.kind == "quality_focal":
            args = (
                x,
                self.labels,
                self.quality,
                self.normalizer,
                self.beta,
                reduction,
                self.divisor,
            )
            return (
                ops.quality_focal_loss(*args)
                if grad is None
                else ops.quality_focal_loss_backward(grad, *args)
            )
        args = (x, self.targets, self.normalizer, self.gamma, self.alpha, reduction, self.divisor)
        if grad is None:
            return ops.sigmoid_focal_loss_dense(*args)
        return ops.sigmoid_focal_loss_dense_backward(grad, *args)

    # --- the emulated CUDA kernels
    def call(self, op):
        x = self.logits
        c = EmuCall()
        c.op, c.kind, c.logits_type = OPS[op], KINDS[self.kind], LOGITS_TYPES[self.dtype]
        c.logits, c.rows, c.cols = _ptr(x), x.shape[0], x.shape[1]
        c.row_stride, c.col_stride = x.stride(0), x.stride(1)
        if self.kind == "dense_focal":
            c.targets = _ptr(self.targets)
            c.targets_row_stride, c.targets_col_stride = self.targets.stride()
        else:
            c.labels, c.labels_int32 = _ptr(self.labels), int(self.labels.dtype == torch.int32)
            c.label_stride = self.labels.stride(0)
        weighted = self.alpha >= 0
        c.gamma, c.gamma_is_two = self.gamma, int(self.gamma == 2.0)
        c.weight_positive = self.alpha if weighted else 1.0
        c.weight_negative = 1.0 - self.alpha if weighted else 1.0
        c.beta = self.beta
        if self.kind == "quality_focal":
            c.quality, c.quality_stride = _ptr(self.quality), self.quality.stride(0)
        c.normalizer, c.divisor = _ptr(self.normalizer), self.divisor
        c.multiprocessors, c.blocks_per_multiprocessor = (
            self.multiprocessors,
            self.blocks_per_multiprocessor,
        )
        return c

    def out_like_kernels(self, dtype):
        """An [N, K] output in the layout the CUDA driver allocates (compiled_ops.output_strides on
        CUDA)."""
        rows, cols = self.logits.shape
        column_major = rows > 1 and cols > 1 and self.logits.stride(0) == 1
        return torch.empty_strided(
            (rows, cols), (1, rows) if column_major else (cols, 1), dtype=dtype
        )


def _run(emulator, call):
    result = EmuResult()
    status = emulator.emu_run(ctypes.byref(call), ctypes.byref(result))
    assert result.error == b"", result.error.decode()
    assert status == 0, f"emulation status {status}"
    return result


def emulate(emulator, case, reduction, grad=None, visits=None, schedule=0):
    """(output, EmuResult): the forward for `reduction`, or its backward given the upstream gradient
    `grad`."""
    rows, cols = case.logits.shape
    acc = _acc(case.dtype)
    if grad is None:
        call = case.call(reduction)
        if reduction == "none":
            out = case.out_like_kernels(acc).fill_(float("nan"))
        else:
            out = torch.full((), float("nan"), dtype=acc)
            capacity = 64
            partial_sums = torch.full((capacity,), float("nan"), dtype=acc)
            partial_counts = torch.full((capacity,), -7, dtype=torch.int64)
            call.partial_sums, call.partial_counts, call.partial_capacity = (
                _ptr(partial_sums),
                _ptr(partial_counts),
                capacity,
            )
    else:
        call = case.call("backward")
        out = case.out_like_kernels(case.dtype).fill_(float("nan"))
        upstream = grad.to(acc)
        call.grad, call.grad_elementwise = _ptr(upstream), int(reduction == "none")
        if reduction == "none":
            call.grad_row_stride, call.grad_col_stride = upstream.stride()
        valid = None
        # as focal_loss_cuda_ops.cpp: a count on the device, or a constant for targets
        if reduction == "mean":
            if case.kind == "dense_focal":
                call.divisor = case.divisor * max(rows * cols, 1)
            else:
                valid = (case.labels >= 0).sum().to(torch.int64)
                call.valid_rows = _ptr(valid)
    call.out = _ptr(out)
    call.schedule = schedule
    if visits is not None:
        call.visits = _ptr(visits)
    result = _run(emulator, call)
    if grad is None and reduction != "none":
        grid = result.reduce_grid_size
        assert torch.isfinite(partial_sums[:grid]).all(), "a block did not write its partial sum"
        assert (partial_counts[:grid] >= 0).all(), "a block did not write its row count"
        assert torch.isnan(partial_sums[grid:]).all() and (partial_counts[grid:] == -7).all(), (
            "a partial sum was written past the grid"
        )
        assert list(result.grids[:2]) == [grid, 1] and result.launches == 2, (
            "reduce, then one finalize block"
        )
        assert int(partial_counts[:grid].sum()) == (
            rows if case.kind == "dense_focal" else int((case.labels >= 0).sum())
        )
    return out, result


def _tolerances(dtype):
    if dtype == torch.float64:
        return dict(rtol=1e-11, atol=1e-13)
    return dict(rtol=2e-5, atol=1e-6)


def _grad_tolerances(dtype):
    return {
        torch.float16: dict(rtol=2e-3, atol=1e-5),
        torch.bfloat16: dict(rtol=1.6e-2, atol=1e-4),
    }.get(dtype, _tolerances(dtype))


def _expected_grid(case, result):
    rows_per_block = THREADS // result.threads_per_row
    needed = max(1, -(-case.logits.shape[0] // rows_per_block))
    return min(needed, case.multiprocessors * case.blocks_per_multiprocessor)


def check_against_cpu(emulator, case, reductions=("none", "sum", "mean")):
    g = torch.Generator().manual_seed(1)
    rows, cols = case.logits.shape
    for reduction in reductions:
        expected = case.cpu(reduction)
        visits = torch.zeros(rows, cols, dtype=torch.int32)
        got, result = emulate(emulator, case, reduction, visits=visits)
        torch.testing.assert_close(got, expected, **_tolerances(case.dtype), equal_nan=False)
        # the kernels that share memory, also with the warps in the other order
        if reduction != "none":
            again, _ = emulate(emulator, case, reduction, schedule=1)
            torch.testing.assert_close(again, expected, **_tolerances(case.dtype))
        assert result.visits_out_of_range == 0
        if reduction == "none":
            assert (visits == 1).all(), "forward 'none': every element written exactly once"
        else:
            assert result.reduce_grid_size == _expected_grid(case, result)
            counted = (
                torch.ones(rows, dtype=torch.bool)
                if case.kind == "dense_focal"
                else case.labels >= 0
            )
            assert (visits[counted] == 1).all() and (visits[~counted] == 0).all(), (
                "reduced forward: each element of a non-ignored row summed exactly once, ignored "
                "rows skipped"
            )
        upstream = (
            torch.rand(rows, cols, generator=g, dtype=torch.float64) + 0.5
            if reduction == "none"
            else (torch.tensor(1.7, dtype=torch.float64))
        )
        expected_grad = case.cpu(reduction, grad=upstream.to(_acc(case.dtype)))
        visits.zero_()
        got_grad, result = emulate(emulator, case, reduction, grad=upstream, visits=visits)
        assert got_grad.dtype == case.dtype
        torch.testing.assert_close(got_grad, expected_grad, **_grad_tolerances(case.dtype))
        assert (visits == 1).all(), "backward: every element written exactly once"
        assert list(result.grids[:1]) == [_expected_grid(case, result)] and result.launches == 1
    return result


@pytest.mark.parametrize("kind", ["sigmoid_focal", "quality_focal", "dense_focal"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_emulated_kernels_match_cpu_kernels(emulator, kind, dtype):
    for rows, cols in [(300, 80), (37, 3), (1, 1)]:
        result = check_against_cpu(
            emulator, Case(kind=kind, rows=rows, cols=cols, dtype=dtype, seed=rows)
        )
        vector = 16 // torch.empty((), dtype=dtype).element_size()
        assert result.vector_width == (vector if cols % vector == 0 else 1), (
            "the vectorised path where rows allow it"
        )


@pytest.mark.parametrize("kind", ["sigmoid_focal", "quality_focal", "dense_focal"])
def test_emulated_kernels_with_no_rows(emulator, kind):
    case = Case(kind=kind, rows=0, cols=80)
    for reduction in ("none", "sum", "mean"):
        got, _ = emulate(emulator, case, reduction)
        torch.testing.assert_close(got, case.cpu(reduction))
        grad = (
            torch.ones(0, 80, dtype=torch.float64)
            if reduction == "none"
            else torch.tensor(1.0, dtype=torch.float64)
        )
        got_grad, _ = emulate(emulator, case, reduction, grad=grad)
        assert got_grad.shape == (0, 80)


@pytest.mark.parametrize("kind", ["sigmoid_focal", "quality_focal", "dense_focal"])
@pytest.mark.parametrize("layout", ["column_major", "strided", "row_padded"])
def test_emulated_kernels_on_non_contiguous_logits(emulator, kind, layout):
    case = Case(kind=kind, rows=300, cols=80, layout=layout, seed=3)
    result = check_against_cpu(emulator, case)
    assert result.column_major == (layout == "column_major")
    if layout == "column_major":  # one thread per row: a warp reads 32 adjacent rows of one column
        assert result.threads_per_row == 1 and result.vector_width == 1
    elif layout == "strided":
        assert result.vector_width == 1
    else:  # a row stride of K + 4 keeps every fp32 row 16-byte aligned: still vectorised
        assert result.vector_width == 4


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_emulated_kernels_layouts_in_every_dtype(emulator, dtype):
    for layout in ("column_major", "row_padded", "offset"):
        result = check_against_cpu(
            emulator, Case(kind="sigmoid_focal", rows=37, cols=80, dtype=dtype, layout=layout)
        )
        assert result.column_major == (layout == "column_major")
        # 16-bit rows of K + 4 or shifted by one element are not 16-byte aligned
        if layout != "column_major":
            vector = 16 // torch.empty((), dtype=dtype).element_size()
            assert result.vector_width == (
                vector if layout == "row_padded" and dtype == torch.float64 else 1
            )


def test_emulated_kernels_misaligned_and_strided_targets(emulator):
    """Logits or float targets that do not start on a 16-byte boundary take the scalar path (the
    emulation reports any misaligned 128-bit access); strided targets and quality are read through
    their strides."""
    for dtype in (torch.float32, torch.float16):
        for kind in ("sigmoid_focal", "dense_focal"):
            result = check_against_cpu(
                emulator, Case(kind=kind, rows=37, cols=80, dtype=dtype, layout="offset")
            )
            assert result.vector_width == 1
        for targets_layout in ("offset", "column_major"):
            case = Case(
                kind="dense_focal", rows=37, cols=80, dtype=dtype, targets_layout=targets_layout
            )
            assert check_against_cpu(emulator, case).vector_width == 1
    check_against_cpu(emulator, Case(kind="quality_focal", rows=300, cols=80, quality_stride=3))


def test_emulated_kernels_wide_rows_use_whole_warps(emulator):
    """K = 1203 (LVIS): 32 threads share a row, so a warp reads one contiguous run of it."""
    for kind in ("sigmoid_focal", "dense_focal"):
        result = check_against_cpu(
            emulator, Case(kind=kind, rows=20, cols=1203, seed=13), reductions=("none", "sum")
        )
        assert result.threads_per_row == 32 and result.vector_width == 1
    result = check_against_cpu(emulator, Case(rows=37, cols=80))
    # 20 units of 4 columns, 8 threads per row
    assert (result.threads_per_row, result.vector_width) == (
        8,
        4,
    )


def test_emulated_kernels_int32_labels_device_normalizer_and_constants(emulator):
    for kind in ("sigmoid_focal", "quality_focal"):
        check_against_cpu(
            emulator, Case(kind=kind, label_dtype=torch.int32, normalizer=12.5, divisor=3.0, seed=5)
        )
    check_against_cpu(emulator, Case(kind="dense_focal", normalizer=12.5, divisor=3.0, seed=6))
    for gamma, alpha in [
        (0.0, 0.25),
        (1.5, -1.0),
        (0.5, 0.9),
    ]:  # gamma != 2: the general modulating factor
        check_against_cpu(emulator, Case(kind="sigmoid_focal", gamma=gamma, alpha=alpha, seed=7))
        check_against_cpu(emulator, Case(kind="dense_focal", gamma=gamma, alpha=alpha, seed=8))
    for beta in (0.0, 1.0, 0.5):
        check_against_cpu(emulator, Case(kind="quality_focal", beta=beta, seed=9))


def test_emulated_grid_stride_loops_cover_every_row(emulator):
    """One resident block on one multiprocessor: a single block strides over all 300 rows."""
    for kind in ("sigmoid_focal", "dense_focal"):
        case = Case(
            kind=kind, rows=300, cols=80, multiprocessors=1, blocks_per_multiprocessor=1, seed=11
        )
        result = check_against_cpu(emulator, case)
        assert result.grids[0] == 1
        case = Case(
            kind=kind, rows=300, cols=24, multiprocessors=64, blocks_per_multiprocessor=8, seed=12
        )
        # 6 units of 4: 2 threads per row, 128 rows per block: 3 blocks
        result = check_against_cpu(emulator, case)
        assert result.threads_per_row == 2 and result.grids[0] == 3
        case = Case(
            kind=kind,
            rows=600,
            cols=80,
            layout="column_major",
            multiprocessors=1,
            blocks_per_multiprocessor=1,
        )
        # one thread per row: 256 rows per pass, 3 passes of one block
        result = check_against_cpu(emulator, case)
        assert result.column_major == 1 and result.grids[0] == 1


def test_emulated_bad_targets_trip_the_device_assertion(emulator):
    case = Case(kind="sigmoid_focal", rows=37, cols=80)
    case.labels[5] = 81  # K + 1
    _, result = emulate(emulator, case, "sum")
    assert result.assertion_count > 0 and b"outside [-1, K]" in result.assertion
    case = Case(kind="quality_focal", rows=37, cols=80)
    case.quality[case.labels.clamp(min=0) < 80] = float("nan")
    _, result = emulate(emulator, case, "none")
    assert result.assertion_count > 0 and b"quality" in result.assertion
    case = Case(kind="dense_focal", rows=37, cols=80)
    case.targets[3, 7] = 1.5
    _, result = emulate(emulator, case, "sum")
    assert result.assertion_count == 1 and b"target is outside [0, 1]" in result.assertion
    _, result = emulate(emulator, Case(kind="dense_focal"), "sum")  # and a good case trips nothing
    assert result.assertion_count == 0


def test_emulation_models_barriers_and_shuffles(emulator):
    """The emulation itself: the kernels' block_sum over 256 threads is exact, and a barrier or a
    shuffle that not every thread reaches is reported instead of passing silently."""
    emulator.emu_selfcheck.argtypes = [
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.POINTER(ctypes.c_double),
        ctypes.c_char_p,
        ctypes.c_int64,
    ]
    out = ctypes.c_double(-1.0)
    error = ctypes.create_string_buffer(256)

    def selfcheck(which, schedule=0):
        out.value = -1.0
        return emulator.emu_selfcheck(which, schedule, ctypes.byref(out), error, 256)

    for schedule in (0, 1):
        assert selfcheck(0, schedule) == 0 and error.value == b""
        assert out.value == sum(range(THREADS))
    assert selfcheck(1) == 1 and b"__syncthreads" in error.value
    assert selfcheck(2) == 1 and b"32 lanes" in error.value
    # Reusing a block_sum's shared array without a barrier: invisible in index order, caught with
    # the warps reversed.
    assert selfcheck(3, schedule=0) == 0 and out.value == sum(range(THREADS))
    assert selfcheck(3, schedule=1) == 0 and out.value != sum(range(THREADS))
    assert selfcheck(4) == 1 and b"not 16-byte aligned" in error.value
