"""`ExpansionPlan`: what an expansion does to every variable, as a readable table."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class PlanRow:
    """One target variable: where it comes from and how it is computed."""

    path: str
    source_shape: tuple
    target_shape: tuple
    how: str


@dataclasses.dataclass
class ExpansionPlan:
    """The result of `keras_lemon.expansion_plan`.

    Attributes:
        model_class: name of the source (and target) model class.
        source_sizes: dict of the source's sizes (layers, hidden, heads, ...).
        target_sizes: dict of the target's sizes.
        dims: dict of role -> `DimExpansion` (stream, heads, ...).
        blocks: list of strings, one per target block (which source block it
            copies, whether it is new).
        rows: list of `PlanRow`, one per target variable.
        method: `"lemon"`, `"net2net"` or `"zero_blocks"`.
    """

    model_class: str
    source_sizes: dict
    target_sizes: dict
    dims: dict
    blocks: list
    rows: list
    method: str

    @property
    def target_parameters(self):
        return sum(_size(r.target_shape) for r in self.rows)

    def __str__(self):
        sizes = ", ".join(
            f"{k} {self.source_sizes[k]}->{self.target_sizes[k]}"
            for k in self.target_sizes
        )
        lines = [f"{self.model_class} expansion ({self.method}): {sizes}"]
        lines.append(
            "roles: " + ", ".join(f"{k} {d.describe()}" for k, d in self.dims.items())
        )
        lines.append("blocks: " + ", ".join(self.blocks))
        width = max([len(r.path) for r in self.rows] + [8])
        lines.append(f"{'variable':<{width}}  {'source':>16}  {'target':>16}  rule")
        for r in self.rows:
            lines.append(
                f"{r.path:<{width}}  {_fmt(r.source_shape):>16}  "
                f"{_fmt(r.target_shape):>16}  {r.how}"
            )
        lines.append(f"parameters: {self.target_parameters:,} in the target")
        return "\n".join(lines)


def _fmt(shape):
    return "(" + ",".join(str(s) for s in shape) + ")"


def _size(shape):
    n = 1
    for s in shape:
        n *= s
    return n
