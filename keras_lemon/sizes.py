"""Resolving requested sizes into target sizes."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class TransformerSizes:
    """The sizes that LEMON grows: depth, width, heads and FFN width."""

    layers: int
    hidden: int
    heads: int
    intermediate: int

    @property
    def head_dim(self):
        return self.hidden // self.heads

    def as_dict(self):
        return dataclasses.asdict(self)


def resolve_sizes(source, *, hidden=None, layers=None, heads=None,
                  intermediate=None, post_ln=False, model_name="model",
                  tied_heads=True, exact=True):
    """Fills in defaults and checks a requested expansion.

    Defaults: `layers` and `hidden` unchanged; `heads` grows with `hidden` so
    that the head size stays; `intermediate` keeps `intermediate / hidden`.

    Args:
        source: `TransformerSizes` of the source model.
        hidden, layers, heads, intermediate: requested target sizes or None.
        post_ln: True for post-LN models, whose width must be a multiple
            (unless `exact=False`).
        model_name: used in error messages.
        tied_heads: True when `heads * head_dim == hidden` (keras-hub, most
            models): heads then grow with `hidden`. False for attention
            whose head size is set on its own (keras.io's ViT uses
            `key_dim=hidden`): heads stay unless asked, head size unchanged.

    Returns:
        The target `TransformerSizes`.

    Raises:
        ValueError: naming the model, what was asked and what is possible.
    """
    for name, value in (("hidden", hidden), ("layers", layers), ("heads", heads),
                        ("intermediate", intermediate)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    hidden = source.hidden if hidden is None else hidden
    layers = source.layers if layers is None else layers
    for name, asked, have in (("hidden", hidden, source.hidden), ("layers", layers, source.layers),
                              ("heads", heads, source.heads),
                              ("intermediate", intermediate, source.intermediate)):
        if asked is not None and asked < have:
            raise ValueError(
                f"{model_name}: {name}={asked} would shrink the model ({name} is "
                f"{have}); LEMON only grows: choose {name} >= {have}."
            )
    if post_ln and hidden % source.hidden and exact:
        raise ValueError(
            f"{model_name} is post-LN: hidden must be a multiple of "
            f"{source.hidden} for an exact LayerNorm expansion, got {hidden}; "
            f"possible: {', '.join(str(source.hidden * m) for m in (2, 3, 4))}, ... "
            "(or pass exact=False for the best approximation, with its error measured)"
        )
    if not tied_heads:
        heads = source.heads if heads is None else heads
        if intermediate is None:
            intermediate = round(source.intermediate * hidden / source.hidden)
        return TransformerSizes(layers, hidden, heads, intermediate)
    valid = valid_heads(source, hidden)
    if heads is None:
        heads, rem = divmod(source.heads * hidden, source.hidden)
        if rem or heads not in valid:
            raise ValueError(
                f"{model_name}: with hidden={hidden}, keeping the head size "
                f"{source.head_dim} needs {source.heads * hidden / source.hidden:g} "
                f"heads, not an integer. Pass heads= explicitly; valid choices: "
                f"{valid}."
            )
    elif heads not in valid:
        raise ValueError(
            f"{model_name}: heads={heads} does not fit hidden={hidden} (heads "
            f"must divide hidden and keep a head size >= {source.head_dim}); "
            f"valid choices: {valid}."
        )
    if intermediate is None:
        intermediate = round(source.intermediate * hidden / source.hidden)
    return TransformerSizes(layers, hidden, heads, intermediate)


def valid_heads(source, hidden):
    """Head counts possible at width `hidden` for heads tied to the width.

    Heads never shrink and must divide `hidden`, and the head size never
    shrinks (a larger one is exact: the query is rescaled).

    >>> valid_heads(TransformerSizes(6, 384, 12, 1536), 768)
    [12, 16, 24]
    """
    return [n for n in range(source.heads, hidden + 1)
            if hidden % n == 0 and hidden // n >= source.head_dim]
