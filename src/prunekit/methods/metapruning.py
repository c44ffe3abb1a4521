"""MetaPruning — Liu, Mu, Zhang, Guo, Yang, Cheng, Sun, "MetaPruning: Meta Learning for
Automatic Neural Network Channel Pruning" (ICCV 2019); official code ``liuzechun/MetaPruning``.

Algorithm (paper Sec. 3):

1. A **PruningNet** generates the weights of every width configuration of the network: for each
   layer with filters, a small block (``FC(2, 32) -> ReLU -> FC(32, numel)``) maps the layer's
   *network encoding* (here: the kept fraction of its output channels and of its input channels)
   to the layer's full weight, of which the first ``out`` x ``in`` channels are used.
2. Training the PruningNet: at every step a random width vector is drawn, the weights generated
   for it, and the loss of that pruned network back-propagates into the blocks (the remaining
   parameters, normalisation layers, train as usual). Here channels beyond a layer's width are
   zeroed (with its normalisation parameters) rather than cropped: the same function
   (:class:`PruningNet`).
3. **Evolutionary search** under the FLOPs constraint: a population of width vectors meeting it,
   each scored by the validation accuracy of the network with *generated* weights, after the
   BatchNorm statistics are recomputed for that vector (the official search re-collects them
   on training batches); each iteration keeps the ``top`` best, and makes ``mutations`` mutants
   (each gene redrawn with probability ``mutate``), ``crossovers`` (genes from two parents) and
   random vectors for the rest of the population; children outside the constraint or already
   seen are redrawn.
4. The best vector is applied: the model gets its generated weights and recomputed statistics,
   the channels beyond each width are removed, and the runner trains it (the paper trains the
   winner from scratch).

A gene is a channel group's width (the groups of the graph: layers that must keep the same
channels, e.g. a residual stage, share one). The first population is drawn as random shares
per group rescaled to meet the target (:func:`prunekit.methods.search.allocate` with the last
channels going first); a candidate meets the constraint when its FLOPs (or params) reduction
is within ``window`` of the target.

Defaults and their sources: the generator blocks' hidden width 32 (official
``resnet/training/resnet.py``: ``fc11 = Linear(., 32)``); ``mutate`` 0.1 (official
``resnet/searching/search.py``: ``m_prob``); ``population`` 16, ``top`` 4, ``mutations`` 6,
``crossovers`` 6, ``search_budget`` 40 evaluations: the official search uses 50 / 10 / 25 / 25
over 20 iterations, divided by about three for CPU runs; ``window`` 0.02: the official
constraint is a FLOPs window (``min_FLOPs`` 1950 M to ``max_FLOPs`` 2050 M, about 5% wide);
``pruningnet_epochs`` 3: prunekit (the official PruningNet trains 32 epochs on ImageNet);
``lr`` 0.001: prunekit. The generators start from the trained weights, so this training is a
fine-tuning, and a step of the output layer moves a generated weight by about
``(1 + |h|^2) lr`` (``h``: the block's hidden activations, ``|h|^2`` about 6, from 2 to 15, at
initialisation): 0.001 moves the weights at about the fine-tuning rate 0.01. Measured on
mnist1d_cnn / MNIST-1D at 50% fewer FLOPs with 3 fine-tuning epochs: lr 0.05 diverges (13.1%
after fine-tuning, 9.4% right after pruning), 0.005 gives 67.7%, 0.001 gives 78.3% (58.1% right
after pruning); ``recal_batches`` 4: prunekit (the official search recomputes BN statistics on 100
training batches).

Deviations: zeroing instead of cropping (same outputs); groups instead of layers, and each
layer's encoding is its own (out, in) kept fractions (the official ResNet encodes a block by its
(mid, in, out) scales) with any integer width (the official code draws 31 scales from 10% to
100%); the generators start from the trained weights instead of from scratch; BN statistics are
recomputed as a cumulative average; the winner is fine-tuned from its generated weights by the
runner instead of trained from scratch.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader

from prunekit.errors import ConfigError
from prunekit.graph import Graph, Group, build
from prunekit.graph.core import out_weight
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.options import option
from prunekit.methods.search import (
    SearchOptions,
    Trial,
    allocate,
    search_setup,
    val_metrics,
)
from prunekit.prune import PruneReport, selection_roots

Widths = dict[str, int]


def last_first(group: Group) -> torch.Tensor:
    """A within-group order removing the last channels first (a width keeps the first ones)."""
    return -torch.arange(group.size, dtype=torch.float64)


def tail_picks(graph: Graph, widths: Widths) -> dict[str, list[int]]:
    """The units a width vector removes: each group's channels from its width on."""
    sizes = {g.name: g.size for g in graph.groups}
    return {n: list(range(w, sizes[n])) for n, w in widths.items() if w < sizes[n]}


def layer_groups(graph: Graph) -> dict[str, tuple[str | None, str | None]]:
    """For each layer with filters: the group carrying its output channels and the group
    carrying its input channels (None where they are not prunable)."""
    out: dict[str, list[str | None]] = {}
    for g in graph.groups:
        for m in g.members:
            module = graph.sites[m.layer].module
            w = out_weight(module)
            if w is None or w.dim() < 2:
                continue
            slot = out.setdefault(m.layer, [None, None])
            slot[0 if m.side == "out" else 1] = g.name
    return {k: (v[0], v[1]) for k, v in out.items()}


class PruningNet(nn.Module):
    """The model with every filter weight generated from its layer's encoding
    ``(out kept fraction, in kept fraction)`` by ``FC(2, hidden) -> ReLU -> FC(hidden, numel)``;
    channels beyond the widths are zeroed (weights, biases and normalisation parameters, through
    ``masks``). In training mode each forward draws a random width vector (seeded by the
    ``steps`` buffer, so a resumed training draws the same ones); otherwise it uses
    :attr:`widths`."""

    def __init__(
        self,
        model: nn.Module,
        graph: Graph,
        masks: MaskMaker,
        sizes: dict[str, int],
        hidden: int,
        seed: int,
    ) -> None:
        super().__init__()
        self.base = copy.deepcopy(model)
        self.masks = masks
        self.sizes = sizes
        self.seed = seed
        self.widths: Widths = dict(sizes)
        names = dict(model.named_modules())
        self.layers = {}
        blocks = {}
        for layer, (g_out, g_in) in layer_groups(graph).items():
            weight = names[layer].weight
            key = layer.replace(".", "__")
            self.layers[f"{layer}.weight"] = (key, g_out, g_in, tuple(weight.shape))
            blocks[key] = nn.Sequential(
                nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, weight.numel())
            )
        self.blocks = nn.ModuleDict(blocks)
        with torch.no_grad():  # start from the trained weights whatever the encoding
            for pname, (key, _, _, _) in self.layers.items():
                last = self.blocks[key][2]
                last.weight.mul_(0.01)
                last.bias.copy_(dict(model.named_parameters())[pname].detach().flatten())
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def _fraction(self, group: str | None, widths: Widths) -> float:
        return 1.0 if group is None else widths[group] / self.sizes[group]

    def draw(self, step: int) -> Widths:
        """The random width vector of training step ``step``: each group uniform in 1..size."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return {n: int(torch.randint(1, s + 1, (1,), generator=g)) for n, s in self.sizes.items()}

    def parameters_for(self, widths: Widths) -> dict[str, torch.Tensor]:
        """The base model's parameters for ``widths``: generated filters, masked channels."""
        masks = self.masks(widths)
        params = dict(self.base.named_parameters())
        out = {}
        for name, p in params.items():
            if name in self.layers:
                key, g_out, g_in, shape = self.layers[name]
                code = torch.tensor(
                    [self._fraction(g_out, widths), self._fraction(g_in, widths)],
                    dtype=p.dtype,
                )
                p = self.blocks[key](code).view(shape)
            out[name] = p * masks[name] if name in masks else p
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            widths = self.draw(int(self.steps))
            self.steps += 1
        else:
            widths = self.widths
        return functional_call(self.base, self.parameters_for(widths), (x,))


class MaskMaker:
    """0/1 masks of every parameter for a width vector: a copy of the model with every
    parameter set to one, its channels beyond the widths zeroed through the graph."""

    def __init__(self, model: nn.Module, example: torch.Tensor) -> None:
        self.model = copy.deepcopy(model).eval()
        self.graph = build(self.model, example)

    def __call__(self, widths: Widths) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            for p in self.model.parameters():
                p.fill_(1.0)
            roots = selection_roots(self.graph, tail_picks(self.graph, widths))
            if roots:
                self.graph.zero(roots)
            return {
                n: p.detach().clone()
                for n, p in self.model.named_parameters()
                if not bool((p == 1).all())
            }


@torch.no_grad()
def recalibrate(net: PruningNet, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Recompute every BatchNorm's running statistics for ``net.widths`` as the average over
    ``batches`` (the official search re-collects them before scoring a candidate)."""
    norms = [m for m in net.base.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    params = net.parameters_for(net.widths)
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    net.base.train()
    try:
        for x, _ in batches:
            functional_call(net.base, params, (x,))
    finally:
        net.base.eval()


@dataclass(frozen=True)
class MetaPruningOptions(SearchOptions):
    pruningnet_epochs: int = option(
        3,
        help="epochs training the PruningNet",
        source="prunekit (official: 32 on ImageNet)",
        low=0,
    )
    lr: float = option(
        0.001,
        help="learning rate of the PruningNet training (SGD, cosine)",
        source="prunekit: the generated weights then move at about the fine-tuning rate 0.01 "
        "(0.05 diverged on mnist1d_cnn: 13.1% after fine-tuning; module docstring)",
        low=0,
        low_open=True,
    )
    hidden: int = option(
        32,
        help="hidden units of each weight-generating block",
        source="official resnet/training/resnet.py: fc11 = Linear(., 32)",
        low=1,
    )
    population: int = option(
        16, help="width vectors per generation", source="official search.py: 50; scaled", low=2
    )
    top: int = option(
        4,
        help="best vectors kept as parents",
        source="official search.py: select_num 10; scaled",
        low=1,
    )
    mutations: int = option(
        6,
        help="mutants per generation",
        source="official search.py: mutation_num 25; scaled",
        low=0,
    )
    crossovers: int = option(
        6,
        help="crossovers per generation",
        source="official search.py: crossover_num 25; scaled",
        low=0,
    )
    mutate: float = option(
        0.1,
        help="probability that a gene is redrawn in a mutant",
        source="official search.py: m_prob 0.1",
        low=0,
        high=1,
    )
    window: float = option(
        0.02,
        help="how far a candidate's reduction may be from the target",
        source="official search.py: min_FLOPs / max_FLOPs window, about 5% wide",
        low=0,
        high=1,
    )
    recal_batches: int = option(
        4,
        help="training batches recomputing BatchNorm statistics per candidate",
        source="prunekit (official: 100 batches)",
        low=1,
    )


def _batches(ctx: Context, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(ctx.seed + 1)
    loader = DataLoader(ctx.train_set, batch_size=ctx.batch_size, shuffle=True, generator=g)
    return list(islice(iter(loader), count))


@register_method("metapruning")
class MetaPruning(Method):
    """MetaPruning (Liu et al., ICCV 2019): a PruningNet that generates the weights of any
    width vector is trained on random vectors; an evolutionary search under the FLOPs (or
    params) constraint scores vectors with generated weights; the best is applied with its
    generated weights.

    After :meth:`prune`: ``candidates`` (every evaluated width vector), ``trials`` and
    ``best``."""

    Options = MetaPruningOptions

    def __init__(self) -> None:
        self.candidates: list[Widths] = []
        self.trials: list[Trial] = []
        self.best: int | None = None

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        with search_setup(self.id, ctx, opts, kinds=("flops", "params")) as setup:
            graph, names, target, dense = setup.graph, setup.names, setup.target, setup.dense
            sizes = {g.name: g.size for g in graph.groups}
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(ctx.seed)  # the generator blocks' initialisation
                net = PruningNet(
                    ctx.model,
                    graph,
                    MaskMaker(ctx.model, ctx.example_input),
                    sizes,
                    opts.hidden,
                    ctx.seed,
                )
            ctx.train(
                net, opts.pruningnet_epochs, opts.lr, name="pruningnet", progress=opts.progress
            )
            net.eval()
            recal = _batches(ctx, opts.recal_batches)
            metric = target.kind
            dense_value = float(getattr(dense, metric))

            def reduction(widths: Widths) -> float:
                roots = selection_roots(graph, tail_picks(graph, widths))
                return 1.0 - float(getattr(graph.plan(roots), metric)) / dense_value

            def score(widths: Widths) -> Trial:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(ctx.seed)
                    net.widths = {**sizes, **widths}
                    recalibrate(net, recal)
                    acc, loss = val_metrics(net, ctx.val_set, opts.val_batches, ctx.batch_size)
                return Trial(acc, loss, flops_reduction=reduction(widths))

            rng = np.random.default_rng(ctx.seed)
            evolution = _Evolution(graph, names, sizes, target, opts, rng, reduction)
            with setup.search(scorer=score) as search:
                population = evolution.first()
                while population and not search.exhausted:
                    trials = search.evaluate(population)
                    self.candidates += population[: len(trials)]
                    population = evolution.next(self.candidates, list(search.trials))
                self.trials, self.best = list(search.trials), search.best
            if self.best is None:
                raise ConfigError("metapruning: no width vector was evaluated")
            widths = {**sizes, **self.candidates[self.best]}
            net.widths = widths
            recalibrate(net, recal)
            self._apply(ctx.model, net)
            return setup.remove(tail_picks(graph, widths))

    @staticmethod
    @torch.no_grad()
    def _apply(model: nn.Module, net: PruningNet) -> None:
        """The winner's generated weights and recomputed statistics into ``model``."""
        params = net.parameters_for(net.widths)
        for name, p in model.named_parameters():
            p.copy_(params[name].detach())
        for (_, b), (_, nb) in zip(model.named_buffers(), net.base.named_buffers(), strict=True):
            b.copy_(nb)


class _Evolution:
    """The official search's population steps over width vectors meeting the constraint."""

    def __init__(self, graph, names, sizes, target, opts, rng, reduction) -> None:  # type: ignore[no-untyped-def]
        self.graph, self.names, self.sizes, self.target = graph, names, sizes, target
        self.opts, self.rng, self.reduction = opts, rng, reduction

    def valid(self, widths: Widths) -> bool:
        return abs(self.reduction(widths) - self.target.fraction) <= self.opts.window

    def first(self, count: int | None = None, known: set | None = None) -> list[Widths]:  # type: ignore[type-arg]
        """``count`` (default: the population) random vectors meeting the target, not in
        ``known``: random shares per group rescaled to the target, the last channels first."""
        count = self.opts.population if count is None else count
        known = set() if known is None else known
        out: list[Widths] = []
        for _ in range(50 * max(count, 1)):
            if len(out) == count:
                break
            shares = {n: float(self.rng.uniform(0.05, 1.0)) for n in self.names}
            try:
                picks = allocate(self.graph, shares, self.target, last_first)
            except ConfigError:
                continue
            widths = {n: self.sizes[n] - len(picks.get(n, [])) for n in self.names}
            key = tuple(sorted(widths.items()))
            if key in known:
                continue
            known.add(key)
            out.append(widths)
        if not out and count:
            raise ConfigError(
                f"metapruning: no width vector meets the target {self.target} (channels too coarse)"
            )
        return out

    def next(self, seen: list[Widths], trials: list[Trial]) -> list[Widths]:
        o = self.opts
        ranked = sorted(range(len(seen)), key=lambda i: trials[i].key, reverse=True)
        parents = [seen[i] for i in ranked[: o.top]]
        known = {tuple(sorted(w.items())) for w in seen}
        children: list[Widths] = []

        def add(make: Iterator[Widths], count: int) -> None:
            made = 0
            for _ in range(10 * max(count, 1)):
                if made == count:
                    return
                child = next(make)
                key = tuple(sorted(child.items()))
                if key in known or not self.valid(child):
                    continue
                known.add(key)
                children.append(child)
                made += 1

        def mutants() -> Iterator[Widths]:
            while True:
                p = parents[int(self.rng.integers(len(parents)))]
                yield {
                    n: int(self.rng.integers(1, self.sizes[n] + 1))
                    if self.rng.random() < o.mutate
                    else w
                    for n, w in p.items()
                }

        def crosses() -> Iterator[Widths]:
            while True:
                a = parents[int(self.rng.integers(len(parents)))]
                b = parents[int(self.rng.integers(len(parents)))]
                yield {n: (a[n] if self.rng.random() < 0.5 else b[n]) for n in a}

        add(mutants(), o.mutations)
        add(crosses(), o.crossovers)
        # the rest of the population: new random vectors (official ``random_can``)
        with contextlib.suppress(ConfigError):  # none left to draw: the children alone
            children += self.first(max(0, o.population - len(children)), known)
        return children


__all__ = ["MaskMaker", "MetaPruning", "MetaPruningOptions", "PruningNet", "tail_picks"]
