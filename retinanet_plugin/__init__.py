"""RetinaNet as a Detectron2 plugin.

Importing this package registers, in Detectron2's registries: the meta-architecture
``RetinaNetPlugin``, the backbone ``build_retinanet_plugin_resnet_fpn_backbone``, the anchor
generator ``RetinaNetPluginAnchorGenerator``, and (in the plugin's own head registry)
``RetinaNetPluginHead``; and the embedded synthetic dataset
``retinanet_synthetic_shapes_{train,val}``.
"""

from .config import add_retinanet_plugin_config
from . import modeling  # noqa: F401  (registers the components)

from . import data  # noqa: F401  (registers the synthetic dataset; its files are made on first use)

__version__ = "0.1.0"
__all__ = ["add_retinanet_plugin_config", "modeling"]
