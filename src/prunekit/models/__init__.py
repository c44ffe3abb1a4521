"""Model zoo: the architectures the pruning literature reports results on.

Build models by name with :func:`create`; each registered family lives in its own module and
registers itself on import. Every model is a plain ``nn.Module`` (convs, norms and Linear layers
as modules, no in-place tricks) so the pruning stages can trace it and remove channels.
"""

from __future__ import annotations

# importing the family modules registers their models
from prunekit.models import (  # noqa: F401
    convnet,
    densenet,
    googlenet,
    lenet,
    mnist1d,
    mobilenetv2,
    resnet1d,
    resnet_cifar,
    resnet_imagenet,
    vgg,
)
from prunekit.models.core import (
    MODELS,
    ModelInfo,
    create,
    list_models,
    model_info,
    protected_layers,
    rebuild,
)
from prunekit.models.external import is_factory_spec, load_factory, parse_input_shape

__all__ = [
    "MODELS",
    "ModelInfo",
    "create",
    "is_factory_spec",
    "list_models",
    "load_factory",
    "model_info",
    "parse_input_shape",
    "protected_layers",
    "rebuild",
]
