"""CROWN (Zhang et al., 2018): bounds on a ReLU network's outputs over an input box from linear bounds carried
backward, written by hand for the layers bench's VAEs use (Linear, Conv2d, ConvTranspose2d, ReLU, reshapes).

For an output y_j, a row a of coefficients starts at y_j and moves back through the layers: through an affine
layer it becomes a W (the bias adds a b), through a ReLU it takes the linear relaxation on the side it needs (an
upper bound of y_j takes the upper relaxation where a > 0, the lower one where a < 0). At the input box it is
concretised: a x_c +- |a| x_r. The relaxation of relu(h) over [l, u] with l < 0 < u is the standard one:
above, the chord u (h - l) / (u - l); below, slope 1 where u > -l and 0 elsewhere ("adaptive", auto_LiRPA's
default, so its CROWN is the tests' oracle: tests/vae_robustness/lirpa_reference.py).

The relaxations need bounds on every ReLU's input. These come from CROWN too (back from that layer, with one
row per neuron), intersected with IBP's (both hold, so both together do): as in auto_LiRPA, and much tighter
than IBP alone, since an interval forgets that neurons share inputs. Rows cost (layer size) numbers each, so
two shortcuts, both exact:

- rows whose entries never meet above some layer (a convolution's rows are local) are packed, summed into one
  row per group, carried back together, and taken apart there; their constant terms are summed per row by
  the entries' owners (``Packing``). Only a ReLU's relaxation is not linear in the row, and it acts on each
  entry alone, by its sign;
- a layer with a single ReLU below it and a small input (a decoder's latent code) is bounded forward: every
  neuron's linear bounds in the input's coordinates, carried up. Through one ReLU that is the same linear
  function as CROWN's row (each path from the input crosses one relaxation, chosen by one weight's sign).

Everything runs in float64. Rounding is covered by a slack of 2^-30 of the magnitude of the terms summed
(|a| (|x_c| + x_r) plus the constant terms), some 10^4 times the float64 error of these sums: head room
rather than a proof like IBP's (ibp.py), whose bounds are intersected in anyway.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.families.vae_robustness.ibp import AFFINE, RESHAPES, bias_of, propagate, linear_part, outward

BUDGET = 2 ** 23  # float64 coefficients per step (64 MiB; a ReLU step holds a few such tensors at once)
SLACK = 2.0 ** -30
FORWARD_INPUTS = 64  # inputs of at most this many numbers are bounded forward through their first ReLU
NARROW = 0.25  # rows are packed above the first layer where they cover more than this fraction on average
LAYERS = (*AFFINE, nn.ReLU, *RESHAPES)


def leaves(module: nn.Module) -> list[nn.Module]:
    """The module's layers in order, nested Sequentials flattened."""
    if isinstance(module, nn.Sequential):
        return [leaf for part in module for leaf in leaves(part)]
    if not isinstance(module, LAYERS):
        raise NotImplementedError(f"no linear bound for {type(module).__name__}; bench's CROWN covers Linear, "
                                  "Conv2d, ConvTranspose2d, ReLU and reshapes")
    return [module]


def relaxation(lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """relu(h) <= up_slope h + up_shift and relu(h) >= low_slope h for lower <= h <= upper."""
    unstable = (lower < 0) & (upper > 0)
    up_slope = torch.where(unstable, upper / torch.where(unstable, upper - lower, 1), (lower >= 0).to(lower.dtype))
    up_shift = torch.where(unstable, -lower * up_slope, 0)
    return up_slope, up_shift, (up_slope > 0.5).to(lower.dtype)


def adjoint(layer: nn.Module, a: Tensor, in_shape: torch.Size, weight: Tensor) -> Tensor:
    """Coefficients ``a`` (B, rows, *output) on the affine layer's output, moved to its input through the
    layer's linear part with ``weight`` (its own, or |W| for supports)."""
    flat = a.reshape(-1, *a.shape[2:])
    if isinstance(layer, nn.Linear):
        moved = flat @ weight
    elif isinstance(layer, nn.Conv2d):
        size = [(o - 1) * s - 2 * p + d * (k - 1) + 1 for o, s, p, d, k in
                zip(flat.shape[2:], layer.stride, layer.padding, layer.dilation, layer.kernel_size)]
        extra = tuple(i - s for i, s in zip(in_shape[1:], size))
        moved = F.conv_transpose2d(flat, weight, None, layer.stride, layer.padding, extra, layer.groups,
                                   layer.dilation)
    else:
        moved = F.conv2d(flat, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    return moved.reshape(*a.shape[:2], *in_shape)


class Packing:
    """Rows grouped so that no two rows of a group share an entry at any level from the output down to the
    input of layer ``stop``: ``group`` (rows,) and, per level (the input of layer k), ``owner[k]`` (groups,
    size): which row each entry of a packed row belongs to (``rows`` where none does)."""

    def __init__(self, group: Tensor, owner: dict[int, Tensor], stop: int):
        self.group, self.owner, self.stop = group, owner, stop
        self.rows, self.groups = len(group), int(group.max()) + 1

    @classmethod
    def plan(cls, layers: list[nn.Module], shapes: list[torch.Size], end: int) -> Packing | None:
        """Groups for the rows of every output of layers[end - 1] (None where packing would not pay): the
        rows' supports through |W|, down to the last level where they cover at most ``NARROW`` of it."""
        rows = math.prod(shapes[end])
        if rows * max(math.prod(s) for s in shapes[:end + 1]) > 4 * BUDGET:
            return None
        a = torch.eye(rows).view(1, rows, *shapes[end])
        supports = {end: a[0].flatten(1) > 0}
        for k in range(end - 1, -1, -1):
            layer = layers[k]
            if isinstance(layer, AFFINE):
                a = adjoint(layer, a, shapes[k], layer.weight.detach().float().abs().cpu())
            else:
                a = a.reshape(1, rows, *shapes[k])
            support = a[0].flatten(1) > 0
            if support.float().mean() > NARROW:
                break
            supports[k] = support
        stop = min(supports)
        if stop == end:
            return None
        group = _colour(torch.cat([supports[k] for k in sorted(supports)], 1))
        if int(group.max()) + 1 > rows // 4:
            return None
        owner = {}
        for k, support in supports.items():
            row, entry = support.nonzero(as_tuple=True)
            owner[k] = torch.full((int(group.max()) + 1, support.shape[1]), rows, dtype=torch.long)
            owner[k][group[row], entry] = row
        return cls(group, owner, stop)

    def packed_identity(self, shape: torch.Size, device: torch.device) -> Tensor:
        """The identity rows summed by group: (1, groups, *shape)."""
        packed = torch.zeros(self.groups, self.rows, dtype=torch.float64)
        packed[self.group, torch.arange(self.rows)] = 1
        return packed.view(1, self.groups, *shape).to(device)

    def per_row(self, terms: Tensor, k: int) -> Tensor:
        """Each row's sum of the entries it owns in ``terms`` (B, groups, *level k)."""
        owner = self.owner[k].to(terms.device).flatten().expand(terms.shape[0], -1)
        out = terms.new_zeros(terms.shape[0], self.rows + 1)
        return out.scatter_add_(1, owner, terms.flatten(1))[:, :-1]

    def unpack(self, a: Tensor) -> Tensor:
        """Packed rows (B, groups, *level stop) back to one row each (B, rows, *level stop)."""
        own = self.owner[self.stop].to(a.device)[self.group.to(a.device)]
        own = own == torch.arange(self.rows, device=a.device).unsqueeze(1)
        return a[:, self.group.to(a.device)] * own.view(self.rows, *a.shape[2:])

    def unpack_linear(self, a: Tensor, weight: Tensor) -> Tensor:
        """Packed rows (B, groups, out) on a Linear layer's output through its weight (out, in), one row each
        (B, rows, in): each entry's products go to the row that owns it, with no (rows, out) tensor."""
        products = (a.unsqueeze(-1) * weight).flatten(1, 2)
        out = a.new_zeros(a.shape[0], self.rows + 1, weight.shape[1])
        return out.index_add_(1, self.owner[self.stop].to(a.device).flatten(), products)[:, :-1]


def _colour(support: Tensor) -> Tensor:
    """Greedy colouring of rows (rows, entries): each joins the first group none of whose rows shares an
    entry with it."""
    taken = torch.zeros(len(support), support.shape[1], dtype=torch.bool)
    group, count = torch.empty(len(support), dtype=torch.long), 0
    for row, entries in enumerate(support):
        where = entries.nonzero(as_tuple=True)[0]
        free = (~taken[:count, where].any(1)).nonzero(as_tuple=True)[0]
        g = int(free[0]) if len(free) else count
        count = max(count, g + 1)
        taken[g, where] = True
        group[row] = g
    return group


class Rows:
    """Coefficients (B, rows, *layer shape) for the lower and the upper bound of some linear functions of a
    layer's output, their constant terms (B, rows) and the magnitude of the terms summed (for the slack).
    With a ``packing``, the coefficients are packed rows and the constants are per original row."""

    def __init__(self, a: Tensor, const: Tensor | None = None, packing: Packing | None = None):
        self.low = self.up = a
        self.packing = packing
        rows = a.shape[:2] if packing is None else (a.shape[0], packing.rows)
        self.low_const = self.up_const = a.new_zeros(rows) if const is None else const
        self.size = self.low_const.abs()

    def copy(self) -> Rows:
        rows = Rows(self.up, packing=self.packing)
        rows.low, rows.low_const, rows.up_const, rows.size = self.low, self.low_const, self.up_const, self.size
        return rows

    def _sum(self, terms: Tensor, k: int) -> Tensor:
        return terms.flatten(2).sum(2) if self.packing is None else self.packing.per_row(terms, k)

    def affine(self, layer: nn.Module, k: int, in_shape: torch.Size) -> None:
        """Through layers[k] (affine)."""
        weight = layer.weight.double()
        self._through(layer, k, lambda a: adjoint(layer, a, in_shape, weight))

    def _through(self, layer: nn.Module, k: int, move: Callable[[Tensor], Tensor]) -> None:
        """The affine layers[k]'s bias into the constants, and ``move`` (its linear part) on the coefficients."""
        shared = self.low is self.up
        for side in ("up",) if shared else ("up", "low"):
            a = getattr(self, side)
            if layer.bias is not None:
                term = self._sum(a * bias_of(layer, a[0]), k + 1)
                setattr(self, f"{side}_const", getattr(self, f"{side}_const") + term)
                self.size = self.size + term.abs()
            setattr(self, side, move(a))
        if shared:
            self.low, self.low_const = self.up, self.up_const

    def relu(self, k: int, up_slope: Tensor, up_shift: Tensor, low_slope: Tensor) -> None:
        """Through layers[k] (a ReLU) with its relaxation."""
        up_term = self._sum(self.up.clamp(min=0) * up_shift, k)
        low_term = self._sum(self.low.clamp(max=0) * up_shift, k)
        self.up = torch.where(self.up >= 0, up_slope, low_slope) * self.up
        self.low = torch.where(self.low >= 0, low_slope, up_slope) * self.low
        self.up_const, self.low_const = self.up_const + up_term, self.low_const + low_term
        self.size = self.size + up_term - low_term

    def reshape(self, shape: torch.Size) -> None:
        self.low, self.up = (a.reshape(*a.shape[:2], *shape) for a in (self.low, self.up))

    def unpack(self, layer: nn.Module, k: int) -> int:
        """Packed rows on the input of layers[k + 1] taken apart: through layers[k] if it is a Linear layer,
        else where they are. Returns the level they are then on."""
        packing, level = self.packing, k + 1
        if isinstance(layer, nn.Linear):  # its bias summed per row while the rows are still packed
            weight = layer.weight.double()
            self._through(layer, k, lambda a: packing.unpack_linear(a, weight))
            level = k
        else:
            shared = self.low is self.up
            self.up = packing.unpack(self.up)
            self.low = self.up if shared else packing.unpack(self.low)
        self.packing = None
        return level

    def concretise(self, centre: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
        """The lowest and highest values over the box (centre, radius) of the rows, carried to its level."""
        centre, radius = centre.unsqueeze(1), radius.unsqueeze(1)
        bounds = []
        for a, const, sign in ((self.low, self.low_const, -1), (self.up, self.up_const, 1)):
            size = self.size + self._sum(a.abs() * (centre.abs() + radius), 0)
            value = const + self._sum(a * centre + sign * a.abs() * radius, 0)
            bounds.append(value + sign * SLACK * size)
        return bounds[0], bounds[1]


class Bounded:
    """A network's layers over an input box, with bounds on every layer's input and the ReLUs' relaxations:
    CROWN intersected with IBP after a ReLU, IBP (exact there) before the first. Coefficient rows on its
    output can then be carried back to its input (``back``)."""

    @torch.no_grad()
    def __init__(self, module: nn.Module, lower: Tensor, upper: Tensor):
        self.layers = leaves(module)
        self.inputs, self.relaxed = [(lower, upper)], {}
        for i, layer in enumerate(self.layers):
            if isinstance(layer, nn.ReLU):
                self.relaxed[i] = relaxation(*self.inputs[-1])
            low, up = propagate(layer, *self.inputs[-1])
            if isinstance(layer, AFFINE) and self.relaxed:
                shallow = len(self.relaxed) == 1 and lower[0].numel() <= FORWARD_INPUTS
                linear_low, linear_up = (self._forward if shallow else self._identity)(i + 1, low.shape[1:])
                low, up = torch.maximum(low, linear_low), torch.minimum(up, linear_up)
            self.inputs.append((low, up))

    @property
    def output(self) -> tuple[Tensor, Tensor]:
        return self.inputs[-1]

    def back(self, rows: Rows, start: int | None = None, stop: int = 0, batch: slice = slice(None)) -> Rows:
        """``rows`` on the output of layers[start - 1] (default: the last) carried back to the input of
        layers[stop], with the relaxations of the inputs in ``batch``."""
        for k in range((len(self.layers) if start is None else start) - 1, stop - 1, -1):
            layer, in_shape = self.layers[k], self.inputs[k][0].shape[1:]
            if isinstance(layer, AFFINE):
                rows.affine(layer, k, in_shape)
            elif isinstance(layer, nn.ReLU):
                rows.relu(k, *(t[batch].unsqueeze(1) for t in self.relaxed[k]))
            else:
                rows.reshape(in_shape)
        return rows

    def concretise(self, rows: Rows, batch: slice = slice(None)) -> tuple[Tensor, Tensor]:
        """The lowest and highest values of ``rows`` (carried back to the input) over the input box."""
        lower, upper = (t[batch] for t in self.inputs[0])
        return rows.concretise((upper + lower) / 2, (upper - lower) / 2)

    def _identity(self, end: int, out_shape: torch.Size) -> tuple[Tensor, Tensor]:
        """CROWN bounds on every output of layers[end - 1], one row each. The part above the top ReLU is the
        same for every input, so it is carried once (per chunk of rows), the rest per group of inputs."""
        n, count = self.inputs[0][0].shape[0], math.prod(out_shape)
        shapes = [lo.shape[1:] for lo, _ in self.inputs] + [out_shape]
        top = max(k for k in self.relaxed if k < end) + 1
        packing = Packing.plan(self.layers, shapes, end)
        widest = max(map(math.prod, shapes))
        if packing is not None and packing.stop < top:
            identity = packing.packed_identity(out_shape, self.inputs[0][0].device)
            chunks = [self.back(Rows(identity, packing=packing), end, top)]
            group = max(1, BUDGET // (count * math.prod(shapes[packing.stop]) + packing.groups * widest))
        else:
            eye = torch.eye(count, dtype=torch.float64, device=self.inputs[0][0].device)
            chunk = min(count, max(64, BUDGET // (n * widest)))
            chunks = (self.back(Rows(eye[first:first + chunk].reshape(1, -1, *out_shape)), end, top)
                      for first in range(0, count, chunk))
            group = max(1, BUDGET // (chunk * widest))
        lows, ups = [], []
        for shared in chunks:
            parts = []
            for batch in (slice(g, g + group) for g in range(0, n, group)):
                rows, level = shared.copy(), top
                if rows.packing is not None:
                    self.back(rows, top, packing.stop, batch)
                    level = rows.unpack(self.layers[packing.stop - 1], packing.stop - 1) if packing.stop else 0
                self.back(rows, level, 0, batch)
                parts.append(self.concretise(rows, batch))
            lows.append(torch.cat([p[0] for p in parts]))
            ups.append(torch.cat([p[1] for p in parts]))
        return torch.cat(lows, 1).view(n, *out_shape), torch.cat(ups, 1).view(n, *out_shape)

    def _forward(self, end: int, out_shape: torch.Size) -> tuple[Tensor, Tensor]:
        """The same bounds as ``_identity`` for layers[end - 1] with one ReLU below it, carried forward: every
        neuron's lower and upper bound as coefficients (n, inputs, *shape) on the input plus a constant."""
        lower, upper = self.inputs[0]
        n, d = lower.shape[0], lower[0].numel()
        eye = torch.eye(d, dtype=torch.float64, device=lower.device).view(1, d, *lower.shape[1:])
        low = up = (eye.expand(n, *eye.shape[1:]), torch.zeros_like(lower))
        for i, layer in enumerate(self.layers[:end]):
            shape = self.inputs[i + 1][0].shape[1:] if i + 1 < end else out_shape
            if isinstance(layer, AFFINE):
                weight = layer.weight.double()
                plus, minus = weight.clamp(min=0), weight.clamp(max=0)
                low_plus, low_minus, up_plus, up_minus = (_move(layer, side, w) for side in (low, up)
                                                          for w in (plus, minus))
                bias = bias_of(layer, low_plus[1])
                low = (low_plus[0] + up_minus[0], low_plus[1] + up_minus[1] + bias)
                up = (up_plus[0] + low_minus[0], up_plus[1] + low_minus[1] + bias)
            elif isinstance(layer, nn.ReLU):
                up_slope, up_shift, low_slope = self.relaxed[i]
                low = (low[0] * low_slope.unsqueeze(1), low[1] * low_slope)
                up = (up[0] * up_slope.unsqueeze(1), up[1] * up_slope + up_shift)
            else:
                low, up = ((side[0].reshape(n, d, *shape), side[1].reshape(n, *shape)) for side in (low, up))
        centre, radius = ((upper + lower) / 2).flatten(1), ((upper - lower) / 2).flatten(1)
        bounds = []
        for (coef, const), sign in ((low, -1), (up, 1)):
            coef, const = coef.flatten(2), const.flatten(1)
            size = torch.einsum("nkm,nk->nm", coef.abs(), centre.abs() + radius) + const.abs()
            spread = torch.einsum("nkm,nk->nm", coef.abs(), radius)
            value = const + torch.einsum("nkm,nk->nm", coef, centre) + sign * (spread + SLACK * size)
            bounds.append(value.view(n, *shape))
        return bounds[0], bounds[1]


def _move(layer: nn.Module, side: tuple[Tensor, Tensor], weight: Tensor) -> tuple[Tensor, Tensor]:
    """A linear function's coefficients (n, inputs, *in) and constant (n, *in) through the affine layer's
    linear part with ``weight``."""
    coef, const = side
    moved = linear_part(layer, coef.flatten(0, 1), weight).unflatten(0, coef.shape[:2])
    return moved, linear_part(layer, const, weight)


def crown(module: nn.Module, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Elementwise bounds on ``module(x)`` for every x with lower <= x <= upper, in the bounds' dtype."""
    return outward(*Bounded(module, lower.double(), upper.double()).output, lower.dtype)
