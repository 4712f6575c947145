"""Lossless expansion of every supported keras-hub model class, on this backend.

Each case randomizes every source weight, expands, feeds random inputs
(token ids with padding, images) and compares *all* outputs: the task
outputs directly, the backbones' expanded outputs against the source's
outputs expanded with their pattern. Tolerance: max |diff| <= 1e-5 x
max |output|.
"""

import keras
import numpy as np
import pytest
from conftest import TOLERANCE
from conftest import inputs_for
from conftest import relative_error
from conftest import to_numpy
from conftest import weights_hash

import keras_lemon
from keras_lemon import DimExpansion

COMMON_CASES = {
    "width_x2": dict(hidden=32),
    "heads_kept_head_dim_grows": dict(hidden=32, heads=2),
    "depth_interleave": dict(layers=4),
    "depth_stack": dict(layers=4, placement="stack"),
    "depth_more_than_2x_interleave": dict(layers=5),
    "depth_more_than_2x_stack": dict(layers=5, placement="stack"),
    "width_and_depth": dict(hidden=32, layers=5, intermediate=80),
    "width_and_depth_net2net": dict(hidden=32, layers=3, method="net2net"),
    "width_and_depth_zero_blocks": dict(hidden=32, layers=3, method="zero_blocks"),
}
VIT_ONLY_CASES = {
    "width_non_multiple": dict(hidden=24),
    "width_non_multiple_heads_5_and_depth": dict(hidden=40, heads=5, layers=3),
}
MODELS = ["BertBackbone", "BertMaskedLM", "BertTextClassifier", "ViTBackbone",
          "ViTImageClassifier", "ViTImageClassifierGap"]


def _cases():
    for model in MODELS:
        extra = VIT_ONLY_CASES if model.startswith("ViT") else {}
        for name, kwargs in {**COMMON_CASES, **extra}.items():
            yield pytest.param(model, kwargs, id=f"{model}-{name}")


def expected_outputs(model, outputs, big):
    """Source outputs as the expanded model must produce them."""
    if not isinstance(model, keras.Model) or type(model).__name__.endswith(("MaskedLM", "Classifier")):
        return outputs
    if isinstance(outputs, dict):  # BERT: post-LN, circular stream
        dim = DimExpansion(model.hidden_dim, big.hidden_dim, "circular")
        return {k: dim.expand(v) for k, v in outputs.items()}
    # ViT: the final LayerNorm of an average-expanded stream gives zero extras.
    return DimExpansion(model.hidden_dim, big.hidden_dim, "zero").expand(outputs)


@pytest.mark.parametrize("model_name,kwargs", list(_cases()))
def test_lossless(make_model, model_name, kwargs):
    model = make_model(model_name)
    inputs = inputs_for(model)
    before = weights_hash(model)
    source_out = to_numpy(model(inputs))

    big = keras_lemon.expand_model(model, seed=3, **kwargs)

    assert type(big) is type(model)
    backbone = getattr(big, "backbone", big)
    assert backbone.hidden_dim == kwargs.get("hidden", 16)
    assert backbone.num_layers == kwargs.get("layers", 2)
    expected = expected_outputs(model, source_out, backbone)
    actual = to_numpy(big(inputs))
    if isinstance(expected, dict):
        assert set(actual) == set(expected)
        errors = {k: relative_error(expected[k], actual[k]) for k in expected}
    else:
        errors = {"output": relative_error(expected, actual)}
    assert max(errors.values()) <= TOLERANCE, errors
    assert weights_hash(model) == before, "the source model was modified"


def test_vit_layer_norm_epsilon_is_scaled(make_model):
    model = make_model("ViTBackbone")
    big = keras_lemon.expand_model(model, hidden=24, seed=0)
    # eta^2 = k d / D = 16 / 24
    assert np.isclose(big.layer_norm_epsilon, model.layer_norm_epsilon * 16 / 24)
    assert model.layer_norm_epsilon == 1e-6  # source config untouched


def test_same_seed_same_weights_different_seed_differs(make_model):
    model = make_model("BertBackbone")
    a = keras_lemon.expand_model(model, hidden=32, layers=3, seed=11)
    b = keras_lemon.expand_model(model, hidden=32, layers=3, seed=11)
    c = keras_lemon.expand_model(model, hidden=32, layers=3, seed=12)
    assert weights_hash(a) == weights_hash(b) != weights_hash(c)


def test_masked_lm_keeps_preprocessor_and_tied_embedding(make_model):
    import keras_hub

    tokenizer = keras_hub.models.BertTokenizer(
        vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(45)]
    )
    preprocessor = keras_hub.models.BertMaskedLMPreprocessor(tokenizer, sequence_length=12)
    model = keras_hub.models.BertMaskedLM(make_model("BertBackbone"), preprocessor=preprocessor)
    big = keras_lemon.expand_model(model, hidden=32, seed=0)
    assert big.preprocessor is model.preprocessor
    assert big.masked_lm_head.token_embedding is big.backbone.token_embedding
