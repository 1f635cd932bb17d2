"""Checks of Detectron2's dataset catalogs: the dataset names a config gives are registered, and the
files their metadata names are on disk. They fail early, with a useful message.

Detectron2 registers its builtin datasets (``coco_2017_train`` ...) at the import of
``detectron2.data`` with paths under ``$DETECTRON2_DATASETS`` (default ``datasets``, relative to the
working directory), whether the files exist or not; a missing file otherwise surfaces deep inside
data loading or evaluation.
"""

import difflib
import os
from typing import Iterable, List, Tuple, Union

from .synthetic_shapes import ensure_registered_synthetic_files

__all__ = ["check_dataset_files"]

# metadata keys that hold paths, and whether each names a file (True) or a folder (False)
_PATH_KEYS = (
    ("json_file", True),
    ("image_root", False),
    ("panoptic_json", True),
    ("panoptic_root", False),
    ("sem_seg_root", False),
    ("image_dir", False),
    ("gt_dir", False),
    ("dirname", False),
    ("voc_folder", False),
)


def _builtin_root() -> str:
    """The root Detectron2 used for its builtin registrations (fixed when detectron2.data was
    imported)."""
    from detectron2.data.datasets import builtin

    return getattr(
        builtin, "_root", os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    )


def _unknown_dataset_error(name: str, registered: List[str]) -> KeyError:
    close = difflib.get_close_matches(name, registered, n=5, cutoff=0.5)
    examples = close or sorted(registered)[:8]
    return KeyError(
        f"Dataset '{name}' is not registered in Detectron2's DatasetCatalog "
        f"({'close names' if close else 'registered names include'}: {', '.join(examples)}; "
        f"{len(registered)} registered in all). Register it with DatasetCatalog.register / "
        "register_coco_instances, or import the module that registers it "
        "(e.g. `import retinanet_plugin`) before building the data loader."
    )


def _missing_paths_message(missing: List[Tuple[str, str, str, bool]]) -> str:
    env_value = os.environ.get("DETECTRON2_DATASETS")
    builtin_root = _builtin_root()
    lines = ["Dataset files not found:"]
    for name, key, path, is_file in missing:
        kind = "file" if is_file else "folder"
        shown = path if os.path.isabs(path) else f"{path} (i.e. {os.path.abspath(path)})"
        lines.append(f"  dataset '{name}': {key} {kind} {shown}")
    lines += [
        "Detectron2's builtin datasets are looked for under $DETECTRON2_DATASETS, default "
        f"./datasets relative to the working directory (now {os.getcwd()}): e.g. coco_2017_train "
        "expects "
        "$DETECTRON2_DATASETS/coco/annotations/instances_train2017.json and "
        "$DETECTRON2_DATASETS/coco/train2017/.",
        f"DETECTRON2_DATASETS is {'unset' if env_value is None else repr(env_value)}; Detectron2 "
        "read it when detectron2.data was first imported and registered its builtin datasets "
        f"under {builtin_root!r}, so set it before starting Python.",
        "Download the data there, or train on the embedded synthetic dataset (DATASETS.TRAIN "
        "retinanet_synthetic_shapes_train, DATASETS.TEST retinanet_synthetic_shapes_val).",
    ]
    return "\n".join(lines)


def check_dataset_files(dataset_names: Union[str, Iterable[str]]) -> None:
    """Check that the files named in the metadata of each dataset exist.

    Lazily generated synthetic datasets are generated here if needed, and datasets given by files
    (``coco:JSON``, ``voc:FOLDER``) registered. Datasets whose metadata names no path
    (e.g. registered from in-memory dicts) are not checked.

    Args:
        dataset_names: a name or names, e.g. ``cfg.DATASETS.TRAIN``.
    Raises:
        KeyError: a name is not registered.
        FileNotFoundError: listing every missing (dataset, metadata key, path), and where Detectron2
            looks for its builtin datasets (``DETECTRON2_DATASETS``).
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from .file_datasets import register_file_datasets

    names = [dataset_names] if isinstance(dataset_names, str) else list(dataset_names)
    register_file_datasets(names)  # coco:JSON / voc:FOLDER names not registered yet
    registered = DatasetCatalog.list()
    missing: List[Tuple[str, str, str, bool]] = []
    for name in names:
        if name not in registered:
            raise _unknown_dataset_error(name, registered)
        ensure_registered_synthetic_files(name)
        metadata = MetadataCatalog.get(name)
        for key, is_file in _PATH_KEYS:
            path = metadata.get(key, None)
            if not isinstance(path, (str, os.PathLike)):
                continue
            if not (os.path.isfile(path) if is_file else os.path.isdir(path)):
                missing.append((name, key, os.fspath(path), is_file))
    if missing:
        raise FileNotFoundError(_missing_paths_message(missing))
