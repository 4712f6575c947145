"""Users can register (and override) the rule for a layer class."""

import keras
import pytest
from conftest import TOLERANCE
from conftest import inputs_for
from conftest import relative_error
from conftest import to_numpy
from keras_hub.layers import PositionEmbedding

import keras_lemon
from keras_lemon.rules import get_rule
from keras_lemon.rules.registry import ExpansionError


def test_register_and_inherit():
    class Scale(keras.layers.Layer):
        pass

    class SubScale(Scale):
        pass

    @keras_lemon.register_rule(Scale)
    def rule(layer, ctx):
        pass

    assert get_rule(Scale()) is rule and get_rule(SubScale()) is rule
    assert get_rule(keras.layers.Dense(2)) is not rule
    with pytest.raises(TypeError, match="Layer subclass"):
        keras_lemon.register_rule(int, rule)


def test_user_rule_is_used(make_model):
    original = get_rule(PositionEmbedding(sequence_length=2))
    calls = []

    def my_position_rule(layer, ctx):
        calls.append(ctx.path)
        ctx.fan_out("position_embeddings", {1: ctx.dims["output"]})

    keras_lemon.register_rule(PositionEmbedding, my_position_rule)
    try:
        model = make_model("BertTextClassifier")
        big = keras_lemon.expand_model(model, hidden=32, seed=0)
        x = inputs_for(model)
        assert relative_error(to_numpy(model(x)), to_numpy(big(x))) <= TOLERANCE
        assert calls == ["position_embedding"]

        # A rule that forgets a variable is caught, never a silent random init.
        keras_lemon.register_rule(PositionEmbedding, lambda layer, ctx: None)
        with pytest.raises(ExpansionError, match="position_embedding/embeddings"):
            keras_lemon.expand_model(model, hidden=32, seed=0)
    finally:
        keras_lemon.register_rule(PositionEmbedding, original)


def test_overriding_a_rule_keeps_its_graph_kind():
    from keras_lemon.rules.registry import get_kind

    layer = PositionEmbedding(sequence_length=2)
    original = get_rule(layer)
    try:
        keras_lemon.register_rule(PositionEmbedding, lambda layer, ctx: None)
        assert get_kind(layer) == "positional"
    finally:
        keras_lemon.register_rule(PositionEmbedding, original)
    assert get_kind(layer) == "positional" and get_rule(layer) is original
