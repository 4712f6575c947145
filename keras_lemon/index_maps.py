"""Index maps and vector expansions: the linear algebra under every LEMON rule.

A feature dimension of size `d` grows to `D >= d`. Write `k = D // d`,
`r = D - k * d`. The circular index map `g(j) = j mod d` says which source unit
target unit `j` copies. How the `r` extra units are filled is the dimension's
*pattern*:

- `"circular"`: extras copy `x[:r]` (every target unit is a copy).
- `"average"`: extras hold `mean(x)`.
- `"zero"`: extras hold `0`.

Each pattern is a linear map `x' = M x` with `M` of shape `(D, d)`. Three
operations on weight tensors are all that the layer rules need:

- `DimExpansion.expand` applies `M` along an axis. This is **fan-out**: an axis
  that indexes a layer's outputs is expanded with the pattern of the activation
  it produces.
- `DimExpansion.sum_over_copies` applies `M^T` along an axis: what a consumer
  with weights `W'` effectively applies to the *source* activation, since
  `W'^T M x = (M^T W')^T x`.
- `DimExpansion.distribute_to_copies` applies `P`, a right inverse of `M^T`
  (`M^T P = I`) that spreads each source row evenly over that unit's copies
  (`P[j, i] = 1 / n_i` for the copies `j` of `i`, zero on `average`/`zero`
  extras).

**Fan-in** (an axis that indexes a layer's inputs) then has one formula for
every pattern and for several axes at once:

    W' = R + P (W - M^T R)

so that `M^T W' = W` exactly: the expanded layer computes the same function.
`R` is random (LEMON's symmetry breaking: copies of a unit get *unequal*
weights and so receive different updates); `R = 0` is the equal split of
Net2Net / bert2BERT-FPI. On one `circular` axis this is LEMON's
`W'[j] = R[j] - (sum_{j' ~ j} R[j'] - W[g(j)]) / n_{g(j)}`.

References:
- Wang et al., "LEMON: Lossless model expansion", ICLR 2024
  (arXiv:2310.07999), section 4.
- Chen et al., "Net2Net: Accelerating learning via knowledge transfer",
  ICLR 2016.
"""

import dataclasses

import numpy as np

PATTERNS = ("circular", "average", "zero")


@dataclasses.dataclass(frozen=True)
class DimExpansion:
    """How one feature dimension grows from `source` to `target` units.

    Args:
        source: int. Size `d` of the dimension in the source model.
        target: int. Size `D >= d` in the expanded model.
        pattern: str. How the `r = D mod d` extra units are filled:
            `"circular"`, `"average"` or `"zero"` (see the module docstring).
        exact: bool. False marks a post-LN stream whose width is not a
            multiple (`expand_model(exact=False)`): its LayerNorms see
            partial copies, which change mean and variance, and are
            expanded by plain tiling anyway (the best approximation, never
            called lossless).

    Example:

    >>> dim = DimExpansion(2, 5, "average")
    >>> dim.expand(np.array([1.0, 3.0]))
    array([1., 3., 1., 3., 2.])
    >>> dim.sum_over_copies(np.ones(5))
    array([2.5, 2.5])
    """

    source: int
    target: int
    pattern: str = "circular"
    exact: bool = True

    def __post_init__(self):
        if self.pattern not in PATTERNS:
            raise ValueError(
                f"Unknown expansion pattern {self.pattern!r}; expected one of "
                f"{PATTERNS}."
            )
        if not (0 < self.source <= self.target):
            raise ValueError(
                f"A dimension can only grow: asked {self.source} -> "
                f"{self.target}."
            )

    # --- the index map -------------------------------------------------------

    @property
    def copies(self):
        """`k = D // d`, the number of full copies of the source units."""
        return self.target // self.source

    @property
    def extras(self):
        """`r = D - k * d`, the number of extra units after the full copies."""
        return self.target - self.copies * self.source

    @property
    def is_identity(self):
        return self.source == self.target

    @property
    def variance_ratio(self):
        """`eta^2 = k d / D`: var(V_average(x)) / var(x) (1 when r = 0)."""
        return self.copies * self.source / self.target

    def index_map(self):
        """`g(j) = j mod d` for every target unit `j`, shape `(D,)`."""
        return np.arange(self.target) % self.source

    def copy_mask(self):
        """True for target units that are copies (`M` row one-hot)."""
        mask = np.ones(self.target, dtype=bool)
        if self.pattern != "circular":
            mask[self.copies * self.source :] = False
        return mask

    def copy_counts(self):
        """`n_i`: how many target units copy source unit `i`, shape `(d,)`."""
        return np.bincount(
            self.index_map()[self.copy_mask()], minlength=self.source
        )

    def describe(self):
        if self.is_identity:
            return f"{self.source}"
        return f"{self.source}->{self.target} {self.pattern}" + ("" if self.exact else " (inexact)")

    # --- the three linear maps ----------------------------------------------

    def expand(self, x, axis=-1):
        """Applies `M` along `axis`: fan-out of an output axis, or `V(x)`."""
        x = np.asarray(x)
        if self.is_identity:
            return x
        axis = _check_axis(x, axis, self.source, "expand")
        if self.pattern == "circular":
            extra = x[_axis_slice(x.ndim, axis, slice(0, self.extras))]
        elif self.pattern == "average":
            extra = np.broadcast_to(np.mean(x, axis=axis, keepdims=True),
                                    _resized(x.shape, axis, self.extras))
        else:
            extra = np.zeros(_resized(x.shape, axis, self.extras), x.dtype)
        return _copies_then(x, axis, self.copies, extra)

    def sum_over_copies(self, x, axis=-1):
        """Applies `M^T` along `axis`: `(D, ...)` -> `(d, ...)`."""
        x = np.asarray(x)
        if self.is_identity:
            return x
        axis = _check_axis(x, axis, self.target, "sum_over_copies")
        moved = np.moveaxis(x, axis, 0)
        full = self.copies * self.source
        # Sum the k full copies with one reshape (np.add.at is far slower).
        out = moved[:full].reshape((self.copies, self.source) + moved.shape[1:]).sum(axis=0)
        out = out.astype(np.result_type(x, np.float32), copy=False)
        if self.extras:
            extra = moved[full:]
            if self.pattern == "circular":
                out[: self.extras] += extra
            elif self.pattern == "average":
                # Every extra input holds mean(x) = sum_i x_i / d.
                out += extra.sum(axis=0) / self.source
        return np.moveaxis(out, 0, axis)

    def distribute_to_copies(self, x, axis=-1):
        """Applies `P` along `axis`: `(d, ...)` -> `(D, ...)`, `x[i] / n_i` on copies."""
        x = np.asarray(x)
        if self.is_identity:
            return x
        axis = _check_axis(x, axis, self.source, "distribute_to_copies")
        shares, extra = self._shares(x, axis)
        if extra is None:  # extra units are not copies: they get nothing
            extra = np.zeros(_resized(shares.shape, axis, self.extras), shares.dtype)
        return _copies_then(shares, axis, self.copies, extra)

    def add_distributed(self, out, x, axis=-1):
        """`out += P x` along `axis`, in place, without a target-size temporary.

        `out` has the target size on `axis`, `x` the source size; the result
        equals `out + distribute_to_copies(x, axis)` bit for bit.
        """
        x = np.asarray(x)
        axis = _check_axis(x, axis, self.source, "add_distributed")
        shares, extra = self._shares(x, axis)
        for copy in range(self.copies):
            start = copy * self.source
            out[_axis_slice(out.ndim, axis, slice(start, start + self.source))] += shares
        if extra is not None and self.extras:
            out[_axis_slice(out.ndim, axis, slice(self.copies * self.source, None))] += extra
        return out

    def _shares(self, x, axis):
        """`x[i] / n_i` along `axis`, and what the extra units get (circular:
        the first `r` shares; None for the other patterns, whose extras are
        not copies)."""
        counts = self.copy_counts().astype(np.float32).reshape(
            _resized((1,) * x.ndim, axis, self.source))
        shares = x / counts
        if self.pattern != "circular":
            return shares, None
        return shares, shares[_axis_slice(x.ndim, axis, slice(0, self.extras))]


def _resized(shape, axis, size):
    return tuple(shape[:axis]) + (size,) + tuple(shape[axis + 1:])


def _copies_then(x, axis, copies, extra):
    """`copies` whole copies of `x` along `axis`, then `extra`: `M` as block
    copies (memcpy) rather than a gather by the index map."""
    return np.concatenate([x] * copies + ([extra] if extra.shape[axis] else []), axis=axis)


def _axis_slice(ndim, axis, sl):
    index = [slice(None)] * ndim
    index[axis] = sl
    return tuple(index)


def _check_axis(x, axis, expected, what):
    axis = axis % x.ndim
    if x.shape[axis] != expected:
        raise ValueError(
            f"{what}: axis {axis} of an array of shape {x.shape} has size "
            f"{x.shape[axis]}, expected {expected}."
        )
    return axis


def fan_out(weight, axes):
    """Expands the output axes of a weight tensor with their activations' patterns.

    Args:
        weight: array. Source weight.
        axes: dict `{axis: DimExpansion}` for the axes that index outputs.

    Returns:
        The array with each listed axis expanded by `M` (extras are copies,
        means or zeros according to the pattern).
    """
    for axis, dim in axes.items():
        weight = dim.expand(weight, axis)
    return weight


def fan_in_split(weight, noise, axes, overwrite_noise=False):
    """Splits a weight over the copies of its inputs: `W' = R + P (W - M^T R)`.

    Whatever `noise` is, the result satisfies `M^T W' = W` on the listed axes,
    so a layer fed the expanded activation `M x` computes what the source
    layer computed on `x`.

    Args:
        weight: array with *source* sizes on `axes` (other axes already
            expanded as the caller wants them).
        noise: array `R` of the target shape. LEMON draws it at random; zeros
            give the equal split of Net2Net (`W'[j] = W[g(j)] / n`).
        axes: dict `{axis: DimExpansion}` of the fan-in axes.
        overwrite_noise: the result may be written into `noise` (saves a
            target-size array; the rules pass their fresh draws).

    Returns:
        Array of the target shape.

    Example:

    >>> dim = DimExpansion(2, 4, "circular")
    >>> w = np.array([[1.0], [2.0]])
    >>> fan_in_split(w, np.zeros((4, 1)), {0: dim}).ravel()
    array([0.5, 1. , 0.5, 1. ])
    """
    residual = weight - _apply(noise, axes, "sum_over_copies")
    if len(axes) == 1 and isinstance(noise, np.ndarray) and noise.flags.writeable:
        # One fan-in axis (almost every weight): add P(residual) into a copy
        # of the noise block by block, with no second target-size array.
        (axis, dim), = axes.items()
        if hasattr(dim, "add_distributed"):
            dtype = np.result_type(noise, residual)
            out = noise if overwrite_noise and noise.dtype == dtype else noise.astype(dtype)
            return dim.add_distributed(out, residual, axis)
    return noise + _apply(residual, axes, "distribute_to_copies")


def cancel(noise, axes):
    """Weights whose inputs' copies cancel: `M^T W' = 0` (LEMON's new blocks).

    A layer with these weights (and zero bias) outputs exactly zero on any
    expanded activation, yet its weights are non-zero where a unit has two or
    more copies, so it trains like a fresh layer. Where no unit has copies, or
    `noise` is zero, the result is all zeros.

    Args:
        noise: array `R` of the target shape.
        axes: dict `{axis: DimExpansion}` of the fan-in axes.
    """
    summed = _apply(noise, axes, "sum_over_copies")
    return noise - _apply(summed, axes, "distribute_to_copies")


def _apply(x, axes, method):
    for axis, dim in axes.items():
        x = getattr(dim, method)(x, axis)
    return x


@dataclasses.dataclass(frozen=True)
class FlattenedDim:
    """A feature dimension flattened together with `outer` leading positions.

    `Flatten` turns `(tokens, d)` features into one axis of `tokens * d`
    whose layout is token-major. When the per-token features grow with
    `inner`, the flattened axis grows from `outer * d` to `outer * D`, each
    token's block expanded by `inner`'s pattern. It has the same methods as
    `DimExpansion`, so the fan-in and fan-out formulas apply unchanged.

    Args:
        outer: int, the number of leading positions flattened (tokens).
        inner: the `DimExpansion` of the per-position features.
    """

    outer: int
    inner: DimExpansion

    @property
    def source(self):
        return self.outer * self.inner.source

    @property
    def target(self):
        return self.outer * self.inner.target

    @property
    def pattern(self):
        return self.inner.pattern

    @property
    def copies(self):
        return self.inner.copies

    @property
    def extras(self):
        return self.inner.extras

    @property
    def is_identity(self):
        return self.inner.is_identity

    @property
    def variance_ratio(self):
        return self.inner.variance_ratio

    def describe(self):
        return f"{self.outer}x({self.inner.describe()})"

    def _per_position(self, x, axis, size, method):
        axis = axis % x.ndim
        if x.shape[axis] != self.outer * size:
            raise ValueError(
                f"{method}: axis {axis} of an array of shape {x.shape} has size "
                f"{x.shape[axis]}, expected {self.outer} x {size}."
            )
        split = x.reshape(x.shape[:axis] + (self.outer, size) + x.shape[axis + 1:])
        out = getattr(self.inner, method)(split, axis + 1)
        return out.reshape(x.shape[:axis] + (-1,) + x.shape[axis + 1:])

    def expand(self, x, axis=-1):
        return self._per_position(x, axis, self.inner.source, "expand")

    def sum_over_copies(self, x, axis=-1):
        return self._per_position(x, axis, self.inner.target, "sum_over_copies")

    def distribute_to_copies(self, x, axis=-1):
        return self._per_position(x, axis, self.inner.source, "distribute_to_copies")
