"""Result files: written atomically (a reader never sees half a file), and plain-text tables."""

import json
import os
from typing import Dict, List, Sequence


def write_files(folder: str, stem: str, contents: Dict[str, bytes]) -> List[str]:
    """``folder/stem + extension`` for each (extension, data) of ``contents``, each written
    atomically (``retinanet_plugin.utils.atomic_write``, which creates the folder); returns their
    paths."""
    from retinanet_plugin.utils import atomic_write

    paths = []
    for extension, data in contents.items():
        path = os.path.join(folder, stem + extension)
        atomic_write(path, lambda f, data=data: f.write(data))
        paths.append(path)
    return paths


def json_bytes(report, indent: int = 2) -> bytes:
    return json.dumps(report, indent=indent).encode()


def text_table(rows: Sequence[Sequence[str]], numeric: Sequence[int]) -> str:
    """``rows`` (the first is the header) as aligned columns, those in ``numeric`` right-aligned,
    with a rule under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))
        )
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
