"""Lin, Zhang, Li, Chen, Chao, Wang, Li, Tian, Ji, "1xN Pattern for Pruning Convolutional Neural
Networks", IEEE TPAMI 2022 (official code: lmbxmu/1xN).

The computation, top to bottom, as the official code does it (``utils/conv_type.py``
``BlockL1Conv``, ``imagenet.py``):

1. **Which layers.** The first convolution the input reaches (the stem) and every depthwise
   convolution stay dense: the official MobileNet models build them as plain ``nn.Conv2d``, never
   masked (``models/mobilenet_v1.py``, ``mobilenet_v2.py``); the classifier stays dense too
   (``pr_cfg[-1] = 0`` unless ``--full``), which is prunekit's protected layers. All other conv
   and Linear layers are pruned (a Linear layer counts as a conv with 1x1 kernels).
2. **One rate for every pruned layer** (``pr_cfg = [pr_target] * layers``): each pruned layer
   loses the same fraction of its weights; that fraction is set so the overall sparsity of all
   conv / Linear weights (dense layers included) is the target.
3. **Filter rearrangement.** A layer's output channels are ordered by the L1 norm of their
   filters and consecutive runs of ``N`` of that order form the blocks (``get_rearr_mask``);
   the paper permutes the next layer's input channels to match. Where an addition ties a layer's
   outputs to other layers' (a residual block's last conv, its shortcut conv, the stem), one order
   would have to serve all of them, so the official code keeps those layers in their own order
   (``get_mask``: ResNet-50's ``conv3``, MobileNet-V2's projection convs). Here the channel
   coupling graph decides: a layer's outputs are rearranged only when no other conv / Linear
   layer (depthwise convs aside, which follow any order channel by channel) produces the same
   channels.
4. **1xN blocks.** For every (block, input channel) the ``N`` kernels are kept or pruned together,
   scored by their L1 norm; the lowest are pruned in each layer (:mod:`prunekit.masks`
   granularity ``"1xn"``).

Default ``block`` (``N``) = 16: ``utils/options.py`` ``--N`` default 16 (the paper reports N =
2 ... 32). Deviations: the rearrangement decides which channels share a block and is kept in the
masks' metadata (``meta["permutation"]``) instead of permuting the weights in memory, so the
pruning decision is the paper's but the dense layout is unchanged; the number of pruned groups is
rounded to nearest (the official code truncates); a layer whose output count is not a multiple of
``N`` has one shorter last block; the official ResNet-50 masks its stem, the MobileNets do not —
prunekit keeps every stem dense.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from prunekit import graph, masks
from prunekit.errors import ConfigError, PrunekitError
from prunekit.masks.granularity import GRANULARITIES, PatternOptions
from prunekit.methods.base import Context, Method, SparsityReport, count_nonzero, register_method
from prunekit.methods.common import eval_modes, restore_modes
from prunekit.methods.fine_grained import (
    share_of_targets,
    stored_weight,
    target_sparsity,
    targets,
)
from prunekit.methods.options import Options, option
from prunekit.methods.retraining import model_device

log = logging.getLogger(__name__)

_CONV = nn.modules.conv._ConvNd


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, _CONV) and module.groups > 1 and module.groups == module.in_channels


def dense_by_design(
    model: nn.Module, example_input: torch.Tensor, layers: dict[str, nn.Module]
) -> list[str]:
    """Weight names of the layers the authors keep dense: the first convolution the input
    reaches (found by running ``example_input``) and every depthwise convolution."""
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda *_, name=n: order.append(name)) for n, m in layers.items()
    ]
    modes = eval_modes(model)
    try:
        with torch.no_grad():
            model(example_input.to(model_device(model)))
    finally:
        for h in handles:
            h.remove()
        restore_modes(modes)
    convs = [n for n in order if isinstance(layers[n], _CONV)]
    dense = {convs[0]} if convs else set()
    dense |= {n for n, m in layers.items() if is_depthwise(m)}
    return sorted(dense)


def rearrangeable(model: nn.Module, example_input: torch.Tensor, names: Iterable[str]) -> set[str]:
    """The weight names among ``names`` whose layer alone produces its output channels (no add
    ties them to another conv / Linear layer; depthwise convs do not count), so the channels may
    be reordered. A model the coupling graph cannot trace gets no rearrangement (logged)."""
    try:
        coupling = graph.build(model, example_input)
    except PrunekitError as e:
        log.warning("one_by_n: no filter rearrangement, the model's coupling is unknown: %s", e)
        return set()
    modules = dict(model.named_modules())
    alone = set()
    for group in coupling.groups:
        producers = [
            n
            for n in group.out_layers
            if isinstance(modules.get(n), (nn.Linear, _CONV)) and not is_depthwise(modules[n])
        ]
        if len(producers) == 1:
            alone.add(producers[0])
    return {n for n in names if n.rsplit(".", 1)[0] in alone}


@dataclass(frozen=True)
class OneByNOptions(Options):
    block: int = option(
        16,
        help="N: output channels per block sharing one kernel pattern",
        source="official utils/options.py (--N, default 16)",
        low=1,
    )


@register_method("one_by_n")
class OneByN(Method):
    """Lin et al. (TPAMI 2022): 1xN block pruning. Stem and depthwise convs stay dense, every
    other layer loses the same fraction in blocks of ``block`` (N, 16) output channels sharing
    one kernel pattern per input channel; blocks follow the L1 order of the filters where no
    residual add ties the outputs. See the module docstring."""

    Options = OneByNOptions

    def __init__(self) -> None:
        self.dense: list[str] = []
        self.rearranged: list[str] = []

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        s = target_sparsity(ctx, self.id)
        model = ctx.model
        before = count_nonzero(model)
        layers = targets(model, self.id)
        self.dense = dense_by_design(model, ctx.example_input, layers)
        pruned = {n: m for n, m in layers.items() if n not in self.dense}
        if not pruned:
            raise ConfigError(
                "one_by_n: every prunable layer is the stem or depthwise, which 1xN keeps dense "
                f"({', '.join(self.dense)}); expected a model with other conv or Linear layers"
            )
        share = share_of_targets(model, pruned, s)
        ordered = rearrangeable(model, ctx.example_input, pruned)
        self.rearranged = sorted(ordered)
        make = GRANULARITIES.get("1xn")
        new = {}
        for name, module in pruned.items():
            pattern = PatternOptions(block=opts.block, rearrange=name in ordered)
            scores = stored_weight(module).detach().abs()
            keep, meta = make(scores, share, name, pattern)
            new[name] = masks.Mask(keep, meta=meta)
        masks.apply_masks(model, new)
        return SparsityReport.measure(model, before)


__all__ = ["OneByN", "dense_by_design", "is_depthwise", "rearrangeable"]
