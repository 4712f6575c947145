"""The core layer rules refuse what they cannot expand exactly, naming the layer."""

import keras
import pytest

from keras_lemon import DimExpansion
from keras_lemon.engine import ExpansionSession
from keras_lemon.rules.core_layers import is_dense_like
from keras_lemon.rules.registry import ExpansionError


def _built(layer, shape):
    layer.build(shape)
    return layer


def _expand(layer, flags=None, **dims):
    ExpansionSession("lemon", 0, planning=True).expand_layer(layer, None, "block/layer", dims,
                                                             flags)


GROW = DimExpansion(4, 6, "average")
KEEP = DimExpansion(4, 4)


def test_einsum_dense_needs_its_axes_from_the_owner():
    layer = _built(keras.layers.EinsumDense("ab,bcd->acd", output_shape=(2, 2)), (None, 4))
    with pytest.raises(ExpansionError, match="'block/layer' \\(EinsumDense\\).*'ab,bcd->acd'.*no "
                                             "known input/output axes"):
        _expand(layer, input=GROW, output=GROW)


def test_dense_like_einsum_dense_expands_as_a_dense():
    # Gemma's feed-forward layers: "btd,df->btf" is a Dense on the last axis.
    layer = _built(keras.layers.EinsumDense("btd,df->btf", output_shape=(None, 4),
                                            bias_axes="f"), (None, 3, 4))
    assert is_dense_like(layer)
    assert not is_dense_like(keras.layers.EinsumDense("btd,dnh->btnh", output_shape=(None, 2, 2)))
    _expand(layer, input=GROW, output=GROW)


@pytest.mark.parametrize("layer,match", [
    (keras.layers.LayerNormalization(axis=(-2, -1)), "normalizes over axes"),
    (keras.layers.LayerNormalization(rms_scaling=True), "rms_scaling=True is not supported"),
])
def test_layer_norm_variants_that_are_not_supported(layer, match):
    with pytest.raises(ExpansionError, match=match):
        _expand(_built(layer, (None, 3, 4)), input=GROW, output=GROW)


def test_layer_norm_of_a_partial_circular_copy_says_which_widths_work():
    layer = _built(keras.layers.LayerNormalization(), (None, 4))
    with pytest.raises(ExpansionError, match="partial circular copy.*multiple of 4.*8, 12, 16"):
        _expand(layer, input=DimExpansion(4, 6, "circular"))


def test_grouped_convolution_is_refused():
    layer = _built(keras.layers.Conv2D(4, 1, groups=2), (None, 5, 5, 4))
    with pytest.raises(ExpansionError, match="grouped convolutions"):
        _expand(layer, input=GROW, output=GROW)


def test_a_new_blocks_output_projection_must_be_zero_at_zero():
    layer = _built(keras.layers.Dense(4, activation="sigmoid"), (None, 4))
    with pytest.raises(ExpansionError, match="activation is not 0 at 0"):
        _expand(layer, {"zero_output": True}, input=GROW, output=KEEP)


def test_a_nonlinear_activation_before_an_average_stream_is_refused():
    layer = _built(keras.layers.Dense(4, activation="gelu"), (None, 4))
    with pytest.raises(ExpansionError, match="activation 'gelu' is applied before it writes "
                                             "into an 'average'-expanded activation.*multiple of 4"):
        _expand(layer, input=KEEP, output=GROW)


def test_attention_whose_sizes_disagree_with_the_plan_is_refused():
    layer = keras.layers.MultiHeadAttention(num_heads=2, key_dim=2)
    layer.build((None, 3, 4), (None, 3, 4))
    with pytest.raises(ExpansionError, match="heads is 2 but the plan expands 3->6"):
        _expand(layer, input=GROW, output=GROW, heads=DimExpansion(3, 6),
                key_dim=DimExpansion(2, 2), value_dim=DimExpansion(2, 2))
