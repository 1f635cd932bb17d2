"""Image files decoded by worker processes while the model runs, handed over in batches, in order.

:class:`ImageStream` reads each :class:`ImageSource` with
:func:`~retinanet_plugin.data.image_reading.read_image_checked` (as the trainer reads images: EXIF
orientation, palette/RGBA/16-bit files, errors naming the file and image id) in ``workers``
processes of a ``torch.utils.data.DataLoader`` (none: in the calling process), and yields lists of
up to ``batch_size`` :class:`StreamedImage` in the order of the sources. Decoded images travel back
to the main process through shared memory (as tensors), not by pickling.

A file that cannot be read (missing, corrupt, truncated, over PIL's size limit, a float image: an
``OSError`` of ``read_image_checked``) is an error raised in the main process with
``read_image_checked``'s message, which names the file (and the image id); with
``skip_unreadable=True`` it is left out instead, with a warning naming it, and listed in
``ImageStream.skipped``. Any other error in a worker (a bug, a bad setting) is raised as the
``DataLoader`` raises it.

:func:`image_files` lists the image files of files, folders and glob patterns.
"""

import glob
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.image_reading import UnreadableImageError, read_image_checked
from ..data.voc import IMAGE_SUFFIXES

__all__ = ["ImageSource", "ImageStream", "StreamedImage", "default_workers", "image_files"]

logger = logging.getLogger(__name__)


def default_workers() -> int:
    """Decoding processes by default: 2, or fewer on a machine with fewer usable cores."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None  # Linux only
    return min(2, len(usable) if usable else (os.cpu_count() or 1))


def image_files(patterns: Sequence[str]) -> List[str]:
    """The image paths of ``patterns``, in order: a folder gives its files with an image suffix
    (``IMAGE_SUFFIXES``), sorted; anything else is a glob pattern (``~`` expanded), its matches
    sorted. A pattern that matches nothing is a ``FileNotFoundError`` naming it."""
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(
                p
                for p in glob.glob(os.path.join(pattern, "*"))
                if p.lower().endswith(IMAGE_SUFFIXES)
            )
        else:
            found = sorted(glob.glob(os.path.expanduser(pattern)))
        if not found:
            raise FileNotFoundError(f"{pattern!r} matches no image file")
        paths.extend(found)
    return paths


@dataclass(frozen=True)
class ImageSource:
    """One image file to read: its path, the image id named in errors (and kept for the caller),
    and the (height, width) its annotations give (for ``exif_orientation="auto"``), if any."""

    file_name: str
    image_id: Any = None
    expected_size: Optional[Tuple[int, int]] = None

    @classmethod
    def of_dataset_dict(cls, record: Dict[str, Any]) -> "ImageSource":
        """The image of a Detectron2 dataset dict (``file_name``, ``image_id``, ``height``,
        ``width``)."""
        return cls(record["file_name"], record.get("image_id"), (record["height"], record["width"]))


@dataclass
class StreamedImage:
    """An image read from ``source``: ``image`` (H, W, 3) uint8 in the stream's ``image_format``;
    ``index``: the source's position in the list given to the stream."""

    index: int
    source: ImageSource
    image: np.ndarray


class _ImageFiles(Dataset):
    """What one worker does for one source: read it, or report why it cannot be read."""

    def __init__(self, sources: Sequence[ImageSource], image_format: str, exif_orientation: str):
        self.sources = list(sources)
        self.image_format = image_format
        self.exif_orientation = exif_orientation

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int):
        source = self.sources[index]
        try:
            image = read_image_checked(
                source.file_name,
                self.image_format,
                source.image_id,
                expected_size=source.expected_size,
                exif_orientation=self.exif_orientation,
            )
        except OSError as error:  # FileNotFoundError, UnreadableImageError, PermissionError...
            return index, None, (isinstance(error, FileNotFoundError), str(error))
        # A tensor goes back through shared memory; BGR images are a reversed (strided) view.
        return index, torch.from_numpy(np.ascontiguousarray(image)), None


def _as_list(batch):
    return batch


class ImageStream:
    """Batches of images read from files in worker processes (see the module docstring).

    Args:
        sources: the files, in the order the batches keep.
        batch_size: images per batch (the last batch, and batches with skipped files, are smaller).
        workers: decoding processes; 0 reads in the calling process, one image at a time.
        image_format: as ``read_image_checked`` takes it (``"BGR"``: what ``DefaultPredictor``
            expects).
        exif_orientation: ``DATASETS.EXIF_ORIENTATION`` ("auto", "apply", "ignore").
        skip_unreadable: leave unreadable files out (with a warning) instead of raising.
        prefetch_batches: batches each worker decodes ahead of the consumer.

    ``consumed`` counts the sources handed over or skipped so far (for progress bars); ``skipped``
    lists ``(source, message)`` of the files left out.
    """

    def __init__(
        self,
        sources: Sequence[ImageSource],
        *,
        batch_size: int = 1,
        workers: int = 0,
        image_format: str = "BGR",
        exif_orientation: str = "auto",
        skip_unreadable: bool = False,
        prefetch_batches: int = 2,
    ):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.sources = list(sources)
        self.batch_size = batch_size
        self.workers = min(workers, -(-len(self.sources) // batch_size))
        self.skip_unreadable = skip_unreadable
        self.prefetch_batches = prefetch_batches
        self._files = _ImageFiles(self.sources, image_format, exif_orientation)
        self.consumed = 0
        self.skipped: List[Tuple[ImageSource, str]] = []

    def __len__(self) -> int:
        return len(self.sources)

    def _loader(self) -> DataLoader:
        extra = {"prefetch_factor": self.prefetch_batches} if self.workers else {}
        return DataLoader(
            self._files,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.workers,
            collate_fn=_as_list,
            **extra,
        )

    def __iter__(self) -> Iterator[List[StreamedImage]]:
        self.consumed, self.skipped = 0, []
        for batch in self._loader():
            images = []
            for index, image, failure in batch:
                source = self.sources[index]
                if failure is not None:
                    missing, message = failure
                    if not self.skip_unreadable:
                        raise (FileNotFoundError if missing else UnreadableImageError)(message)
                    logger.warning(f"skipped: {message}")
                    self.skipped.append((source, message))
                else:
                    images.append(StreamedImage(index, source, image.numpy()))
            self.consumed += len(batch)
            if images:
                yield images
