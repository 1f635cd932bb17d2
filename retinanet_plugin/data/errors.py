"""The error that the dataset checks raise, and how their messages list what they found.

A message lists every problem of a dataset (the first :data:`MAX_LISTED` of each kind, the rest
counted), so that one run shows them all.
"""

from typing import Any, Sequence

__all__ = ["MAX_LISTED", "DatasetValidationError", "listed"]

MAX_LISTED = 10  # problems of one kind named in an error or log line; the rest are counted


class DatasetValidationError(ValueError):
    """A dataset dict that cannot be trained on; the message names the dataset, image and
    annotation."""


def listed(items: Sequence[Any], limit: int = MAX_LISTED) -> str:
    """``"a, b, c"``: the first ``limit`` items, then how many more there are."""
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
