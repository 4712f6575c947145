"""expansion_plan, and clear errors for bad requests (source never modified)."""

import keras
import pytest
from conftest import weights_hash

import keras_lemon


@pytest.mark.parametrize("model_name,kwargs", [
    ("BertMaskedLM", dict(hidden=32, layers=3)),
    ("ViTImageClassifier", dict(hidden=24, layers=4, placement="stack")),
])
def test_plan_matches_the_expanded_model(make_model, model_name, kwargs):
    model = make_model(model_name)
    plan = keras_lemon.expansion_plan(model, **kwargs)
    big = keras_lemon.expand_model(model, seed=0, **kwargs)
    planned = {r.path: r.target_shape for r in plan.rows}
    built = {v.path: tuple(v.shape) for v in big.weights}
    assert planned == built
    assert plan.target_parameters == big.count_params()
    text = str(plan)
    assert "fan-in" in text and "cancel" in text and model_name in text
    assert plan.target_sizes["layers"] == kwargs["layers"]


def test_plan_describes_patterns(make_model):
    text = str(keras_lemon.expansion_plan(make_model("ViTBackbone"), hidden=24))
    assert "16->24 average" in text and "eta=0.8165" in text


BAD_REQUESTS = [
    ("BertBackbone", dict(hidden=8), "shrink.*hidden >= 16"),
    ("BertBackbone", dict(layers=1), "shrink.*layers >= 2"),
    ("BertBackbone", dict(hidden=24), "post-LN.*multiple of 16.*32, 48, 64"),
    ("ViTBackbone", dict(hidden=32, heads=3), r"heads=3 does not fit.*valid choices: \[2, 4\]"),
    ("ViTBackbone", dict(hidden=20), r"2.5 heads.*valid choices: \[2\]"),
    ("ViTBackbone", dict(hidden=32, heads=8), r"head size >= 8"),
    ("ViTBackbone", dict(hidden=32, method="bert2bert"), "method must be one of"),
    ("ViTBackbone", dict(layers=4, placement="middle"), "placement must be one of"),
]


@pytest.mark.parametrize("model_name,kwargs,message", BAD_REQUESTS)
def test_bad_requests_raise_clear_errors(make_model, model_name, kwargs, message):
    model = make_model(model_name)
    before = weights_hash(model)
    with pytest.raises(ValueError, match=message):
        keras_lemon.expand_model(model, **kwargs)
    with pytest.raises(ValueError, match=message):
        keras_lemon.expansion_plan(model, **kwargs)
    assert weights_hash(model) == before


def test_model_name_in_error(make_model):
    with pytest.raises(ValueError, match="BertBackbone 'bert_backbone"):
        keras_lemon.expand_model(make_model("BertBackbone"), hidden=24)


def test_unsupported_model():
    with pytest.raises(ValueError, match="does not support Dense.*supported: BertBackbone"):
        keras_lemon.expand_model(keras.layers.Dense(3), hidden=8)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="no residual connection"):
        keras_lemon.expand_model(model, hidden=8)


@pytest.mark.parametrize("kwargs", [dict(hidden=24.0), dict(hidden=0), dict(layers=-1),
                                    dict(heads=True), dict(intermediate="64")])
def test_bad_sizes_are_value_errors(make_model, kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"{name} must be a positive int, got {kwargs[name]!r}"):
        keras_lemon.expand_model(make_model("ViTBackbone"), **kwargs)
