"""MFP — He, Liu, Zhu, Yang, "Filter Pruning by Switching to Neighboring CNNs With Good
Attribute" (IEEE TNNLS 2022; arXiv 1904.03961, whose first version was titled "Meta Filter
Pruning to Accelerate Deep Convolutional Neural Networks", 2019). The method is called MFP,
meta-attribute-based filter pruning.

The idea: soft filter pruning (SFP) re-selects the filters to zero after every epoch, but always
with the same criterion, although the weights, and with them the filter distribution, change from
epoch to epoch. MFP keeps a *set* of criteria, looks at the network each criterion would make of
the current one (its *neighbouring CNNs*), measures a property of each neighbour (the
*meta-attribute*) and switches to the neighbour whose attribute is best.

Algorithm, as computed here
---------------------------
Input: a trained network, a FLOPs / params target, the criteria set ``C`` (option ``criteria``),
calibration batches ``B`` from the training set, the number of soft epochs ``E``.

1. At step ``t = 0`` (before training) and after each of the ``E`` epochs:

   a. for every criterion ``c`` in ``C``, the neighbour ``N_c``: the current network with, in
      every channel group, the ``c``-lowest filters zeroed, at the one per-layer rate that meets
      the target (:func:`prunekit.prune.select_channels`, ``scope="layer"``, as SFP and FPGM);
   b. its meta-attribute ``A(N_c)``: the mean cross-entropy of ``N_c`` on ``B``, in eval mode
      (:func:`neighbour_loss`; lower is better);
   c. switch to ``N_c*`` with ``c* = argmin_c A(N_c)`` (a tie goes to the criterion listed
      first): its filters are zeroed and stay in the model (:class:`NeighborSwitchPruner`);
   d. train one epoch with the zeroed filters' gradients masked (``mask_gradients`` True, as
      the authors' FPGM code); a filter the next step's criterion does not select trains again,
      so the next step can choose again, with any criterion.

2. Remove the filters of the last selection physically (:meth:`SoftPruner.finish`).

The scores of a filter ``F_i`` of a layer with filters ``F_1 .. F_n`` (flattened to vectors);
lowest goes first:

* ``l1``, ``l2``: its norm ``||F_i||_p`` (magnitude: the "smaller norm, less important" rule);
* ``l1_distance``, ``l2_distance``: its summed distance to the other filters of the layer,
  ``sum_j ||F_i - F_j||_p`` (:func:`distance_sums`); the smallest sums lie nearest the layer's
  geometric median, where the other filters can stand in for them (``l2_distance`` is FPGM's
  criterion, :func:`prunekit.criteria.fpgm`).

A unit produced by several layers (a residual stream) sums its scores over them, as every
criterion of :mod:`prunekit.criteria`. After :meth:`NeighborSwitchMethod.prune`, ``history``
holds every selection, ``criteria_used`` the criterion chosen at each step and ``attributes`` the
meta-attribute of every neighbour at each step.

Sources of the choices, and what could not be checked
-----------------------------------------------------
The paper's method section was not available to us: the copy of the paper that could be consulted (arXiv
1904.03961) gave the abstract and the first lines of the introduction only, and no official code
was found (the first author's repositories hold SFP and FPGM but nothing for this paper, and the
curated filter-pruning lists that cite it give no code link). What rests on the abstracts, and
what is prunekit's reconstruction:

* **Criteria set** ``l1,l2,l1_distance,l2_distance``. The abstract extends the magnitude-based
  criteria (plural; the first version's abstract calls them the p-norm criterion) by a new set of
  criteria based on the geometric distance between filters. Which norms and distances make up the
  two sets is not in the abstract: ``p`` in {1, 2} for both is prunekit's choice (the authors'
  FPGM code, ``pruning_cifar10.py``, offers ``--dist_type`` l1 / l2 / cos for its distance).
* **Meta-attribute = the neighbour's loss** on the calibration batches. The abstract defines the
  meta-attribute only as a property of the network in its current state, used to pick the most
  suitable criteria; the title says the network switches to the neighbouring CNN with the good
  attribute. The loss of the pruned network is the quantity the same authors' follow-up, LFPC
  (CVPR 2020), optimises its criteria sampler by (its abstract: the validation loss of the
  network pruned with the sampled criteria). Which attribute(s) the paper itself uses could not
  be checked.
* **One criterion for the whole network per step.** A neighbouring CNN is a whole network; LFPC's
  abstract presents using the same criteria for every layer as the limitation it removes.
* **When**: every soft-pruning step, i.e. before training and after every epoch, since the abstract
  faults a criterion that stays fixed while the weights change during iterative pruning.
* **Soft, gradients of the zeroed filters masked** (``mask_gradients`` True). The abstract
  builds on soft pruning (previously pruned filters are updated again once a later step does not
  select them). Whether zeroed filters get gradients within an epoch is the one point where the
  authors' two soft-pruning codes differ: SFP's ``train()`` masks nothing, FPGM's calls
  ``do_grad_mask()`` every iteration. MFP extends FPGM (its distance criterion is FPGM's), so
  FPGM's code is followed. Measured on ResNet-20 / digits-32 at 70% fewer FLOPs (seed 0, 3 soft
  epochs, 3 fine-tuning epochs): 97.4% with the mask, 37.0% without (three seeds: 39.8 ±
  3.0), where behind BatchNorm a zeroed filter regrows at once and the last selection keeps
  the regrown filters (the failure documented for SFP in :mod:`prunekit.methods.soft_pruning`).

Defaults: ``epochs`` 3 and ``lr`` 0.01 (constant, Nesterov momentum 0.9, weight decay 5e-4) are
those of prunekit's SFP / FPGM phase (:mod:`prunekit.methods.soft_pruning`, the official FPGM
scripts' pretrained-model setting); the paper's own training settings could not be read.
``calib_batches`` None reads the run's calibration batches (a seeded subset of the training set,
the same at every step).

Deviations, on purpose (beyond the reconstruction above):

* the meta-attribute is measured on training batches, not on a held-out split, so the test data
  a run reports on never steers the pruning;
* the per-layer rate comes from the run's FLOPs / params target and coupled channels (a residual
  stage) are scored and zeroed as one group, as for SFP and FPGM;
* a short soft phase on a trained model (the soft-pruning papers train 200 epochs), then the
  runner's fine-tuning; ``epochs=0`` is one step: the criterion is chosen once, on the trained
  model, and its selection removed;
* at the end the last selection is zeroed whole (BatchNorm terms included) and removed, as
  :meth:`SoftPruner.finish` does for SFP and FPGM.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit import criteria
from prunekit.errors import ConfigError
from prunekit.graph import Graph, Group
from prunekit.graph.core import Site, out_weight
from prunekit.methods.base import Context, register_method
from prunekit.methods.options import SHARED, Options, option
from prunekit.methods.soft_pruning import (
    DEFAULT_SOFT_EPOCHS,
    DEFAULT_SOFT_LR,
    SoftPruner,
    SoftPruningMethod,
    SoftPruningOptions,
)
from prunekit.prune import PruneReport
from prunekit.targets import Target

Batch = tuple[torch.Tensor, torch.Tensor]

DEFAULT_CRITERIA = "l1,l2,l1_distance,l2_distance"


# ---------------------------------------------------------------------- the criteria set
def distance_sums(weight: torch.Tensor, p: float) -> torch.Tensor:
    """``s_i = sum_j ||F_i - F_j||_p`` over the filters (dim 0) of ``weight``, in float64."""
    filters = weight.detach().reshape(weight.shape[0], -1).to(torch.float64)
    return torch.cdist(filters, filters, p=p).sum(1)


def _l1_distance_values(site: Site) -> torch.Tensor | None:
    w = out_weight(site.module)
    if w is None or w.dim() < 2:
        return None  # no filters to compare (BatchNorm and the like)
    return distance_sums(w, 1.0)


def l1_distance(group: Group) -> torch.Tensor:
    """Summed L1 (city-block) distance from each filter to the other filters of its layer, summed
    over the group's output-side layers; lowest = nearest the layer's L1 median."""
    return group.values(_l1_distance_values)


CRITERIA_SET: dict[str, criteria.Criterion] = {
    "l1": criteria.get("l1"),
    "l2": criteria.get("l2"),
    "l1_distance": l1_distance,
    "l2_distance": criteria.get("fpgm"),  # FPGM's sum of Euclidean distances
}


def parse_criteria(text: str) -> list[str]:
    """The criteria named in ``text`` (comma-separated, in order, duplicates dropped); an unknown
    name or an empty list is a :class:`~prunekit.errors.ConfigError`."""
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in CRITERIA_SET]
    if unknown or not names:
        raise ConfigError(
            f"option 'criteria' of method 'neighbor_switch' takes a comma-separated list of "
            f"{', '.join(CRITERIA_SET)}; got {text!r}"
        )
    return names


# ---------------------------------------------------------------------- the meta-attribute
def neighbour_loss(
    model: nn.Module, graph: Graph, picks: Mapping[str, Sequence[int]], batches: Sequence[Batch]
) -> float:
    """The meta-attribute of one neighbouring network: the mean cross-entropy on ``batches`` of
    ``model`` with the filters of ``picks`` zeroed (as a soft step zeroes them: conv / Linear
    filters only), in eval mode. ``model`` is left exactly as it was."""
    if not batches:
        raise ConfigError("neighbor_switch needs calibration batches (calib_batches >= 1)")
    params = list(model.parameters())
    saved = [p.detach().clone() for p in params]
    was_training = model.training
    device = params[0].device if params else torch.device("cpu")
    groups = {g.name: g for g in graph.groups}
    total, count = 0.0, 0
    try:
        for name, indices in picks.items():
            groups[name].zero(indices, filters_only=True)
        model.eval()
        with torch.no_grad():
            for x, y in batches:
                out = model(x.to(device))
                total += float(F.cross_entropy(out, y.to(device), reduction="sum"))
                count += len(y)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
        model.train(was_training)
    return total / count


# ---------------------------------------------------------------------- the switching pruner
class NeighborSwitchPruner(SoftPruner):
    """A :class:`SoftPruner` whose criterion is chosen anew at every step: of the neighbours
    the criteria in ``names`` would make of the current network, the one with the lowest
    :func:`neighbour_loss` on ``batches`` is switched to. ``criteria_used`` and ``attributes``
    record the choice and every neighbour's loss at each step, aligned with ``history``."""

    def __init__(
        self,
        model: nn.Module,
        example_input: Any,
        target: Target | Mapping[str, float],
        batches: Sequence[Batch],
        names: Sequence[str] = tuple(DEFAULT_CRITERIA.split(",")),
        *,
        mask_gradients: bool = False,
    ) -> None:
        self.names = parse_criteria(",".join(names))
        super().__init__(
            model,
            example_input,
            target,
            CRITERIA_SET[self.names[0]],
            mask_gradients=mask_gradients,
        )
        self.batches = list(batches)
        self.criteria_used: list[str] = []  # the criterion switched to at every step
        self.attributes: list[dict[str, float]] = []  # every neighbour's loss at every step
        self._choice: tuple[str, dict[str, float]] | None = None

    def neighbours(self) -> dict[str, dict[str, list[int]]]:
        """``{criterion: selection}``: what each criterion would zero now (the same per-layer
        rate rule as SFP, lowest scores first)."""
        out = {}
        for name in self.names:
            self.criterion = CRITERIA_SET[name]
            out[name] = super().select()
        return out

    def select(self) -> dict[str, list[int]]:
        """The selection of the neighbour with the best (lowest) meta-attribute."""
        neighbours = self.neighbours()
        seen: dict[tuple[Any, ...], float] = {}  # criteria that agree share one evaluation
        attributes = {}
        for name, picks in neighbours.items():
            key = tuple(sorted((g, tuple(sorted(i))) for g, i in picks.items()))
            if key not in seen:
                seen[key] = neighbour_loss(self.model, self.graph, picks, self.batches)
            attributes[name] = seen[key]
        best = min(self.names, key=lambda n: attributes[n])  # ties: the first listed
        self.criterion = CRITERIA_SET[best]
        self._choice = (best, attributes)
        return neighbours[best]

    def step(self) -> dict[str, list[int]]:
        picks = super().step()
        assert self._choice is not None
        best, attributes = self._choice
        self.criteria_used.append(best)
        self.attributes.append(attributes)
        return picks

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["criteria_used"] = list(self.criteria_used)
        state["attributes"] = [dict(a) for a in self.attributes]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.criteria_used = list(state.get("criteria_used", []))
        self.attributes = [dict(a) for a in state.get("attributes", [])]
        if self.criteria_used:
            self.criterion = CRITERIA_SET[self.criteria_used[-1]]


# ---------------------------------------------------------------------- the method
@dataclass(frozen=True)
class NeighborSwitchOptions(SoftPruningOptions):
    """The soft phase of MFP, its criteria set and the data its meta-attribute reads."""

    epochs: int = option(
        DEFAULT_SOFT_EPOCHS,
        help=SHARED["epochs"] + ", a soft step after each (0: one step, one-shot)",
        source="prunekit: SFP / FPGM's short phase on a trained model (the paper's schedule "
        "could not be read)",
        low=0,
    )
    lr: float = option(
        DEFAULT_SOFT_LR,
        help=SHARED["lr"] + ", held constant",
        source="prunekit: SFP / FPGM's (official FPGM scripts, pretrained models: "
        "--learning_rate 0.01); the paper's could not be read",
        low=0,
        low_open=True,
    )
    criteria: str = option(
        DEFAULT_CRITERIA,
        help="the criteria set, comma-separated, from l1, l2 (filter norms), l1_distance, "
        "l2_distance (summed distance to the layer's other filters); a tie goes to the first",
        source="paper abstract: norm-based criteria plus a set of geometric-distance criteria; "
        "p in {1, 2} is prunekit's choice (official FPGM code: --dist_type l1 / l2 / cos)",
    )
    calib_batches: int | None = option(
        None,
        help=SHARED["calib_batches"] + " (the neighbours' loss; None: the run's calib_batches)",
        source="prunekit (a seeded training subset, the same at every step)",
        low=1,
    )
    mask_gradients: bool = option(
        True,
        help="mask the gradients of zeroed filters at every iteration and hold them at zero",
        source="official FPGM pruning_cifar10.py (the authors' code MFP's distance criterion "
        "comes from): train() calls m.do_grad_mask() before step()",
    )


@register_method("neighbor_switch")
class NeighborSwitchMethod(SoftPruningMethod):
    """MFP (He et al., TNNLS 2022): soft filter pruning that, before training and after every
    epoch, forms the neighbouring networks the criteria set (filter L1 / L2 norms, summed L1 /
    L2 distance to the layer's other filters) would make of the current one, measures each
    neighbour's meta-attribute (its loss on calibration batches) and switches to the best one,
    zeroing its filters; the last selection is removed. ``history``, ``criteria_used`` and
    ``attributes`` record every step."""

    Options = NeighborSwitchOptions

    def __init__(self) -> None:
        super().__init__()
        self.criteria_used: list[str] = []
        self.attributes: list[dict[str, float]] = []

    def make_pruner(self, ctx: Context, target: Target, opts: Options) -> NeighborSwitchPruner:
        names = parse_criteria(opts["criteria"])  # refused before any work
        if opts["calib_batches"] is not None:
            ctx = dataclasses.replace(ctx, calib_batches=opts["calib_batches"])
        return NeighborSwitchPruner(
            ctx.model,
            ctx.example_input,
            target,
            ctx.calibration(),
            names,
            mask_gradients=opts["mask_gradients"],
        )

    def prune(self, ctx: Context) -> PruneReport:
        report = super().prune(ctx)
        assert isinstance(self.pruner, NeighborSwitchPruner)
        self.criteria_used = list(self.pruner.criteria_used)
        self.attributes = [dict(a) for a in self.pruner.attributes]
        return report


__all__ = [
    "CRITERIA_SET",
    "NeighborSwitchMethod",
    "NeighborSwitchOptions",
    "NeighborSwitchPruner",
    "distance_sums",
    "l1_distance",
    "neighbour_loss",
    "parse_criteria",
]
