"""Kernels stored as coefficients in a basis, and masks on those coefficients.

Some methods prune a conv's kernels not entry by entry but in another representation: the 2-D
DCT of each kernel (frequency-domain pruning) or a learned per-layer filter basis (interspace
pruning). Every kernel ``w`` of a layer (its spatial entries, flattened to ``s`` values) is
written as ``w = B c`` for the layer's ``s x s`` basis ``B`` (columns: basis kernels), and the
coefficients ``c`` are what is stored, masked and counted.

:class:`BasisKernel` is the ``torch.nn.utils.parametrize`` parametrization doing this: the stored
parameter is the coefficient tensor (the weight's shape), the effective ``weight`` is rebuilt
from the kept coefficients on every access, so the model computes with the pruned kernels.
A hard mask gives pruned coefficients zero gradient; ``dynamic=True`` makes it a
straight-through mask (pruned coefficients keep learning and may come back). A learned basis is
a parameter of the parametrization, trained with the model; its columns are used normalised to
unit length, so a coefficient's magnitude is the size of its basis kernel in the filter.

Counting and baking: :func:`counted_weight` is what :func:`prunekit.masks.report` counts for
such a layer (the kept coefficients: a sparsity figure in the basis, as these papers count it),
and :func:`prunekit.masks.finalize` bakes the kernels back into a plain weight (the spatial
kernels rebuilt from the kept coefficients, dense in general). Measure before finalizing.
Layers without spatial extent (Linear, 1x1 convs) get the trivial 1x1 basis: their
coefficients are their weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.masks.straight_through import straight_through

__all__ = [
    "BasisKernel",
    "attach_basis",
    "basis_layers",
    "basis_of",
    "coefficients",
    "counted_weight",
    "dct_basis",
    "dct_matrix",
    "frequency_bands",
    "kernel_shape",
]


def kernel_shape(weight: torch.Tensor) -> tuple[int, ...]:
    """The spatial shape of ``weight``'s kernels (empty for a Linear weight)."""
    return tuple(weight.shape[2:])


def dct_matrix(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``D`` (``n x n``): ``D[u, x] = a(u) cos(pi (2x + 1) u /
    (2n))``, ``a(0) = sqrt(1/n)``, ``a(u) = sqrt(2/n)``; the DCT of ``x`` is ``D x``."""
    x = torch.arange(n, dtype=dtype)
    u = x[:, None]
    d = torch.cos(math.pi * (2 * x[None, :] + 1) * u / (2 * n)) * math.sqrt(2.0 / n)
    d[0] = math.sqrt(1.0 / n)
    return d


def dct_basis(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The separable DCT basis of kernels of ``shape`` as an ``s x s`` matrix whose column
    ``(u, v, ...)`` (row-major) is the basis kernel ``outer(D[u], D[v], ...)`` flattened, so the
    coefficients of a kernel ``w`` are ``B^T w`` (the n-D DCT) and ``w = B c``."""
    matrix = torch.ones(1, 1, dtype=torch.float64)
    for n in shape:
        matrix = torch.kron(matrix, dct_matrix(n))
    return matrix.T.contiguous().to(dtype)


def frequency_bands(shape: tuple[int, ...]) -> torch.Tensor:
    """The band of each DCT coefficient of a kernel of ``shape``: the sum of its frequency
    indices (``u + v`` for a 2-D kernel: 0 for DC up to ``kh + kw - 2``)."""
    band = torch.zeros(shape, dtype=torch.long)
    for dim, n in enumerate(shape):
        view = [1] * len(shape)
        view[dim] = n
        band = band + torch.arange(n).reshape(view)
    return band


class BasisKernel(nn.Module):
    """Parametrization ``c -> B_n (c * m)`` per kernel: ``c`` the stored coefficients (the
    weight's shape), ``m`` a 0/1 mask of the same shape (float buffer), ``B_n`` the basis with
    columns normalised to unit length. ``learn_basis`` makes ``basis`` a parameter."""

    def __init__(self, basis: torch.Tensor, shape: torch.Size, *, learn_basis: bool) -> None:
        super().__init__()
        if learn_basis:
            self.basis = nn.Parameter(basis.detach().clone())
        else:
            self.register_buffer("basis", basis.detach().clone())
        self.register_buffer("mask", torch.ones(shape))
        self.dynamic = False

    def normalised_basis(self) -> torch.Tensor:
        return self.basis / torch.linalg.vector_norm(self.basis, dim=0, keepdim=True)

    def forward(self, coeffs: torch.Tensor) -> torch.Tensor:
        kept = straight_through(coeffs, self.mask) if self.dynamic else coeffs * self.mask
        s = self.basis.shape[0]
        return (kept.reshape(-1, s) @ self.normalised_basis().T).reshape(coeffs.shape)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """The coefficients of ``weight``'s kernels in the (normalised) basis."""
        s = self.basis.shape[0]
        flat = weight.detach().reshape(-1, s).T.to(self.basis.dtype)
        coeffs = torch.linalg.solve(self.normalised_basis().detach(), flat).T
        return coeffs.reshape(weight.shape).to(weight.dtype)

    @torch.no_grad()
    def set_mask(self, keep: torch.Tensor) -> None:
        self.mask.copy_(keep.to(self.mask))


def attach_basis(
    module: nn.Module, basis: torch.Tensor | None = None, *, learn_basis: bool = False
) -> BasisKernel:
    """Store ``module.weight`` as coefficients in ``basis`` (default: the DCT basis of its
    kernel shape; a layer without spatial extent gets the 1x1 basis, never learned)."""
    weight = module.weight
    shape = kernel_shape(weight)
    size = math.prod(shape)
    if basis is None:
        basis = dct_basis(shape, weight.dtype)
    if tuple(basis.shape) != (size, size):
        raise ValueError(
            f"a basis for kernels of shape {shape} must be {size} x {size}, got {tuple(basis.shape)}"
        )
    param = BasisKernel(basis.to(weight), weight.shape, learn_basis=learn_basis and size > 1)
    parametrize.register_parametrization(module, "weight", param.to(weight.device))
    return param


def basis_of(module: nn.Module) -> BasisKernel | None:
    """The :class:`BasisKernel` on ``module.weight``, if any."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for p in module.parametrizations["weight"]:
        if isinstance(p, BasisKernel):
            return p
    return None


def basis_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Modules whose weight is stored in a basis, by weight name."""
    out = {}
    for name, module in model.named_modules():
        if basis_of(module) is not None:
            out[f"{name}.weight" if name else "weight"] = module
    return out


def coefficients(module: nn.Module) -> torch.Tensor:
    """The kept coefficients of a basis layer (stored coefficients times the mask)."""
    param = basis_of(module)
    if param is None:
        raise ValueError(f"{type(module).__name__}.weight is not stored in a basis")
    return module.parametrizations["weight"].original.detach() * param.mask


def counted_weight(module: nn.Module) -> torch.Tensor:
    """What a sparsity count reads: the kept coefficients of a basis layer, else the weight."""
    return coefficients(module) if basis_of(module) is not None else module.weight
