"""Model-zoo style access to the configs shipped with the plugin.

``get_config_file("retinanet_R50.yaml")`` gives the path of a shipped YAML (which a user YAML can
name in its ``_BASE_``); ``get_config("retinanet_R50.yaml")`` gives a ``CfgNode`` with the plugin's
keys added.
"""

from pathlib import Path
from typing import List

from detectron2.config import CfgNode, get_cfg

from .config import add_retinanet_plugin_config

_PACKAGE_DIR = Path(__file__).resolve().parent
# Installed wheels carry the configs inside the package; an editable install reads the repository's
# folder.
_CONFIG_DIRS = (_PACKAGE_DIR / "model_zoo_configs", _PACKAGE_DIR.parent / "configs")


def _config_dir() -> Path:
    for folder in _CONFIG_DIRS:
        if (folder / "Base-RetinaNet.yaml").is_file():
            return folder
    raise FileNotFoundError(
        f"the plugin's configs are missing: looked in {[str(d) for d in _CONFIG_DIRS]}"
    )


def list_configs() -> List[str]:
    """Names (paths relative to the config folder) of every shipped config."""
    root = _config_dir()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.yaml"))


def get_config_file(config_path: str) -> str:
    """Absolute path of a shipped config, e.g. ``"retinanet_R50.yaml"``."""
    path = _config_dir() / config_path
    if not path.is_file():
        raise FileNotFoundError(
            f"{config_path!r} is not among the plugin's configs: {list_configs()}"
        )
    return str(path)


def get_config(config_path: str) -> CfgNode:
    """A Detectron2 config with the plugin's keys, merged from a shipped config."""
    cfg = add_retinanet_plugin_config(get_cfg())
    cfg.merge_from_file(get_config_file(config_path))
    return cfg


__all__ = ["get_config", "get_config_file", "list_configs"]
