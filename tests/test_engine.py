"""The expansion session's own checks: no rule, wrong shape, written twice, missing, wrong class."""

import keras
import keras_hub
import numpy as np
import pytest

import keras_lemon
from keras_lemon import DimExpansion
from keras_lemon.engine import ExpansionSession
from keras_lemon.rules.registry import ExpansionError


def _dense(units, inputs=3):
    layer = keras.layers.Dense(units)
    layer.build((None, inputs))
    return layer


DIMS = {"input": DimExpansion(3, 3), "output": DimExpansion(2, 2)}


def test_a_layer_with_weights_and_no_rule_is_refused():
    class Unknown(keras.layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(2,), name="w")

    layer = Unknown()
    layer.build((None, 2))
    with pytest.raises(ExpansionError, match="'block/unknown' \\(Unknown\\) has weights but no "
                                             "expansion rule.*register_rule\\(Unknown\\)"):
        ExpansionSession("lemon", 0).expand_layer(layer, None, "block/unknown", DIMS)


def test_a_weightless_layer_without_rule_is_skipped():
    session = ExpansionSession("lemon", 0)
    session.expand_layer(keras.layers.Dropout(0.1), None, "dropout", DIMS)
    assert session.rows == []


def test_a_computed_shape_that_does_not_fit_the_target_is_refused():
    with pytest.raises(ExpansionError, match="rule computed kernel of shape \\(3, 2\\) but the "
                                             "target variable has shape \\(3, 4\\)"):
        ExpansionSession("lemon", 0).expand_layer(_dense(2), _dense(4), "dense", DIMS)


def test_a_variable_written_twice_is_refused():
    session = ExpansionSession("lemon", 0)
    source, target = _dense(2), _dense(2)
    session.expand_layer(source, target, "dense", DIMS)
    with pytest.raises(ExpansionError, match="was written twice"):
        session.expand_layer(source, target, "dense", DIMS)


def test_a_target_of_another_class_is_refused():
    target = keras.layers.EinsumDense("ab,bc->ac", output_shape=2)
    target.build((None, 3))
    with pytest.raises(ExpansionError, match="target layer is a EinsumDense, the source a Dense"):
        ExpansionSession("lemon", 0).expand_layer(_dense(2), target, "dense", DIMS)


def test_unwritten_target_variables_are_named():
    session = ExpansionSession("lemon", 0)
    source, target = _dense(2), _dense(2)
    session.expand_layer(source, target, "dense", DIMS)
    model = keras.Sequential([keras.Input((3,)), target, keras.layers.Dense(5)])
    with pytest.raises(ExpansionError, match="No rule wrote these target variables.*kernel"):
        session.check_complete(model)
    # What was written is the source's kernel (LEMON's noise cancels up to round-off).
    np.testing.assert_allclose(keras.ops.convert_to_numpy(target.kernel),
                               keras.ops.convert_to_numpy(source.kernel), atol=1e-6)


@pytest.mark.parametrize("request_", [dict(layers=4), dict(hidden=32, layers=4)],
                         ids=["depth_only", "width_and_depth"])
def test_expanded_variables_share_no_memory_with_the_source_or_each_other(request_):
    """torch variables are handed their NumPy arrays without a copy: only
    arrays computed for them alone (never a source variable's view)."""
    from conftest import randomize

    small = randomize(keras_hub.models.LlamaBackbone(
        vocabulary_size=50, num_layers=2, num_query_heads=4, num_key_value_heads=2,
        hidden_dim=16, intermediate_dim=32))
    before = [keras.ops.convert_to_numpy(v).copy() for v in small.weights]
    big = keras_lemon.expand_model(small, seed=0, **request_)
    for i, v in enumerate(big.weights):
        v.assign(keras.ops.zeros(v.shape, v.dtype) + float(i))
    for v, value in zip(small.weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), value, err_msg=v.path)
    for i, v in enumerate(big.weights):
        assert np.all(keras.ops.convert_to_numpy(v) == float(i)), v.path
