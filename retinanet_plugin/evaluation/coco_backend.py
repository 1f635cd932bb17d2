"""Which COCO API computes AP: faster-coco-eval (C++) when it is installed, else pycocotools
(Python).

faster-coco-eval is a maintained drop-in for pycocotools' ``COCO`` and ``COCOeval``: the same
matching, the same 101-point interpolation, the same ``eval["precision"]`` array and ``stats``; only
``evaluate()`` and ``accumulate()`` run in C++. ``tests/test_fast_coco_eval.py`` checks that both
give the same AP (within 1e-4 on every metric) and ``benchmarks/bench_coco_eval.py`` measures the
time.
"""

import dataclasses
import logging
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = [
    "BACKENDS",
    "CocoBackend",
    "coco_ap_summary",
    "fast_coco_eval_available",
    "resolve_coco_backend",
    "run_coco_eval",
]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "faster_coco_eval", "pycocotools")
FASTER_COCO_EVAL_REQUIREMENT = (
    "faster-coco-eval==1.8.0"  # the pinned version (tools/stack-requirements.txt)
)
_fallback_logged = False


@dataclasses.dataclass(frozen=True)
class CocoBackend:
    """A COCO API: its name and version, and its ``COCO`` and ``COCOeval`` classes."""

    name: str
    version: str
    COCO: Any
    COCOeval: Any


def _faster_coco_eval() -> Optional[CocoBackend]:
    try:
        import faster_coco_eval
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError:
        return None
    return CocoBackend("faster_coco_eval", faster_coco_eval.__version__, COCO, COCOeval_faster)


def _pycocotools() -> CocoBackend:
    from importlib.metadata import PackageNotFoundError, version

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    try:
        installed = version("pycocotools")
    except PackageNotFoundError:
        installed = "?"
    return CocoBackend("pycocotools", installed, COCO, COCOeval)


def fast_coco_eval_available() -> bool:
    """Whether faster-coco-eval can be imported."""
    return _faster_coco_eval() is not None


def resolve_coco_backend(name: str = "auto") -> CocoBackend:
    """The backend ``name`` asks for: "auto" (faster-coco-eval when installed, else pycocotools,
    saying so once per process in a log line), "faster_coco_eval" (an error when it is not
    installed) or "pycocotools"."""
    global _fallback_logged
    if name not in BACKENDS:
        raise ValueError(f"COCO evaluation backend must be one of {BACKENDS}, got {name!r}")
    if name == "pycocotools":
        return _pycocotools()
    fast = _faster_coco_eval()
    if fast is not None:
        return fast
    if name == "faster_coco_eval":
        raise ImportError(
            f"faster-coco-eval is not installed: pip install {FASTER_COCO_EVAL_REQUIREMENT}"
        )
    if not _fallback_logged:
        _fallback_logged = True
        logger.info(
            "faster-coco-eval is not installed: COCO evaluation uses pycocotools, which gives the "
            "same AP more slowly "
            f"(pip install {FASTER_COCO_EVAL_REQUIREMENT})"
        )
    return _pycocotools()


def _quiet(coco_api) -> None:
    if hasattr(coco_api, "print_function"):
        coco_api.print_function = lambda *args, **kwargs: None


def run_coco_eval(
    gt: Dict[str, Any],
    results: List[Dict[str, Any]],
    backend: CocoBackend,
    *,
    iou_type: str = "bbox",
    max_dets: int = 100,
    quiet: bool = True,
):
    """``COCOeval`` of ``results`` (COCO result dicts) against the COCO dict ``gt``: loadRes,
    evaluate, accumulate; ``summarize()`` too when ``max_dets`` is COCO's 100 (pycocotools' summary
    assumes it). The inputs are copied (both APIs add keys to the dicts they are given).
    ``params.maxDets`` is ``[1, 10, max_dets]``.

    Returns the evaluated ``COCOeval`` object; :func:`coco_ap_summary` reads AP at any ``max_dets``
    from it.
    """
    import contextlib
    import io

    if not results:
        raise ValueError(
            "no detections to evaluate (COCOeval cannot evaluate an empty result list)"
        )
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        coco_gt = backend.COCO()
        coco_gt.dataset = _copied(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([_copied_entry(r) for r in results])
        coco_eval = backend.COCOeval(coco_gt, coco_dt, iou_type)
        coco_eval.params.maxDets = [1, 10, int(max_dets)]
        if quiet:
            for api in (coco_gt, coco_dt, coco_eval):
                _quiet(api)
        coco_eval.evaluate()
        coco_eval.accumulate()
        if int(max_dets) == 100:
            coco_eval.summarize()
    return coco_eval


def _copied_entry(entry: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of a COCO annotation or result dict deep enough for the APIs (which add keys and
    rewrite bbox)."""
    out = dict(entry)
    if isinstance(out.get("bbox"), list):
        out["bbox"] = list(out["bbox"])
    return out


def _copied(gt: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(gt)
    for key in ("images", "categories"):
        if key in out:
            out[key] = [dict(x) for x in out[key]]
    if "annotations" in out:
        out["annotations"] = [_copied_entry(a) for a in out["annotations"]]
    return out


_AREAS = {"": "all", "s": "small", "m": "medium", "l": "large"}


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else float("nan")


def coco_ap_summary(coco_eval, class_names: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl (percent) and, with ``class_names``, ``AP-<name>`` per
    category, read from the accumulated ``eval["precision"]`` at the last ``maxDets`` entry: for
    ``maxDets`` 100 this is exactly what ``COCOeval.summarize()`` reports in ``stats[0:6]`` (and
    Detectron2's per-category AP), for other limits the same definition at that limit. Areas without
    ground truth give NaN, as in Detectron2."""
    precision = coco_eval.eval[
        "precision"
    ]  # [IoU thresholds, recall points, categories, areas, max dets]
    params = coco_eval.params
    area_index = {label: params.areaRngLbl.index(label) for label in _AREAS.values()}
    iou_thresholds = np.asarray(params.iouThrs)
    out = {}
    for suffix, label in _AREAS.items():
        out["AP" + suffix] = 100.0 * _mean_valid(precision[:, :, :, area_index[label], -1])
    for threshold in (0.5, 0.75):
        t = int(np.argmin(np.abs(iou_thresholds - threshold)))
        out[f"AP{int(threshold * 100)}"] = 100.0 * _mean_valid(
            precision[t, :, :, area_index["all"], -1]
        )
    if class_names is not None:
        if len(class_names) != precision.shape[2]:
            raise ValueError(
                f"{len(class_names)} class names for {precision.shape[2]} evaluated categories"
            )
        for k, name in enumerate(class_names):
            out[f"AP-{name}"] = 100.0 * _mean_valid(precision[:, :, k, area_index["all"], -1])
    return out
