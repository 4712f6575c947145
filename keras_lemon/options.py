"""`expansion_options`: what a model is and how it can grow, before expanding it."""

import dataclasses

from keras_lemon.adapters.keras_models import is_functional
from keras_lemon.adapters.keras_models import is_keras_hub_model
from keras_lemon.depth import PLACEMENTS
from keras_lemon.support import graph_adapter
from keras_lemon.sizes import valid_heads


@dataclasses.dataclass(frozen=True)
class ExpansionOptions:
    """The result of `expansion_options`; `print()` it for a summary.

    Attributes:
        model_class: name of the model's class.
        family: the model family (`"BERT (post-LN)"`, `"ViT (pre-LN)"`, or
            `"functional keras.Model"` / `"subclassed keras.Model"`).
        post_ln: True when LayerNorms follow the residual adds.
        sizes: `TransformerSizes` of the model.
        tied_heads: True when `heads * head_dim == hidden`, so that heads grow
            with the width.
        parameters: int, number of parameters.
        widths: a few valid target hidden sizes (the smallest ones).
        heads_by_width: dict width -> valid head counts at that width (tied
            heads only).
    """

    model_class: str
    family: str
    post_ln: bool
    sizes: object
    tied_heads: bool
    parameters: int
    widths: tuple
    heads_by_width: dict

    def __str__(self):
        s = self.sizes
        lines = [
            f"model: {self.model_class} ({self.family})",
            f"layer norm: {'post-LN' if self.post_ln else 'pre-LN'}",
            f"sizes: layers {s.layers}, hidden {s.hidden}, heads {s.heads}"
            + (f" of size {s.head_dim}" if self.tied_heads else "")
            + f", intermediate {s.intermediate}",
            f"parameters: {self.parameters:,}",
            "possible expansions:",
            f"  layers: any >= {s.layers} (placement: {' or '.join(PLACEMENTS)})",
        ]
        if self.post_ln:
            lines.append(
                f"  hidden: multiples of {s.hidden} (post-LN: exact only for whole "
                f"copies): {', '.join(map(str, self.widths))}, ..."
            )
        else:
            lines.append(f"  hidden: any >= {s.hidden}, e.g. {', '.join(map(str, self.widths))}")
        for width, heads in self.heads_by_width.items():
            default = s.heads * width // s.hidden if s.heads * width % s.hidden == 0 else None
            choices = ", ".join(
                f"{h} (size {width // h}{', default' if h == default else ''})" for h in heads
            )
            lines.append(f"  heads at hidden {width}: {choices}")
        if not self.tied_heads:
            lines.append(f"  heads: any >= {s.heads} (head size stays)")
        lines.append(
            f"  intermediate: any >= {s.intermediate} (default keeps "
            f"intermediate / hidden = {s.intermediate / s.hidden:g})"
        )
        lines.append("  method: lemon (default), net2net or zero_blocks")
        return "\n".join(lines)


def expansion_options(model, *, config_keys=None, sample_inputs=None):
    """Describes a model and the expansions `expand_model` can do on it.

    Args:
        model: a model `expand_model` accepts.
        config_keys, sample_inputs: as `expand_model`, for your own models.

    Returns:
        An `ExpansionOptions`.

    Raises:
        ValueError: for a model `expand_model` does not support.

    Example:

    >>> import keras_hub
    >>> bert = keras_hub.models.BertBackbone(vocabulary_size=100, num_layers=2,
    ...     num_heads=2, hidden_dim=32, intermediate_dim=64)
    >>> options = expansion_options(bert)
    >>> options.post_ln, options.widths, options.heads_by_width[64]
    (True, (64, 96, 128), [2, 4])
    """
    adapter = graph_adapter(model, config_keys, sample_inputs)
    sizes = adapter.transformer_sizes()
    post_ln, tied = adapter.roles.post_ln, adapter.source_sizes["tied_heads"]
    if is_keras_hub_model(model):
        name = f"keras-hub {type(model).__name__} ({'post-LN' if post_ln else 'pre-LN'})"
    else:
        name = f"{'functional' if is_functional(model) else 'subclassed'} keras.Model"
    widths = tuple(sizes.hidden * k for k in (2, 3, 4))
    return ExpansionOptions(
        model_class=type(model).__name__,
        family=name,
        post_ln=post_ln,
        sizes=sizes,
        tied_heads=tied,
        parameters=model.count_params(),
        widths=widths,
        heads_by_width={w: valid_heads(sizes, w) for w in widths[:2]} if tied else {},
    )
