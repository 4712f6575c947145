"""Expanding under `keras.distribution` (issue 16): JAX, 8 devices.

`expand_model` inside a `DataParallel` or `ModelParallel` scope: every
variable of the grown model lands with the layout the map gives its path
(keras-hub's own map for Llama, keras_lemon's for BERT and ViT), holds the
same values as the expansion without a distribution, the grown model is
lossless and `fit` runs with the batch split across devices.

The suite's JAX run has one CPU device; `scripts/test` runs this file again
in a process with `XLA_FLAGS=--xla_force_host_platform_device_count=8`.
"""

import keras
import keras_hub
import numpy as np
import pytest
from conftest import randomize

import keras_lemon
from keras_lemon.lossless import output_error

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax" or len(keras.distribution.list_devices()) < 8,
    reason="keras.distribution with 8 devices: JAX only, and this process has fewer devices "
           "(scripts/test reruns this file with XLA_FLAGS=--xla_force_host_platform_device_count=8)",
)

TOKENS = {"token_ids": np.random.default_rng(0).integers(1, 64, (8, 12)).astype("int32"),
          "padding_mask": np.ones((8, 12), "int32")}


def mesh():
    return keras.distribution.DeviceMesh((2, 4), ("batch", "model"),
                                         keras.distribution.list_devices()[:8])


def llama_lm(dtype="float32"):
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=64, num_layers=2, num_query_heads=4, num_key_value_heads=2,
        hidden_dim=16, intermediate_dim=32, dtype=dtype)
    return randomize(keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None))


def bert_classifier():
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=64, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=12)
    return randomize(keras_hub.models.BertTextClassifier(backbone, num_classes=2,
                                                         preprocessor=None))


def vit_classifier():
    backbone = keras_hub.models.ViTBackbone(image_shape=(8, 8, 3), patch_size=4, num_layers=2,
                                            num_heads=2, hidden_dim=8, mlp_dim=16)
    return randomize(keras_hub.models.ViTImageClassifier(backbone, num_classes=2,
                                                         preprocessor=None))


CASES = {
    "llama": (llama_lm, dict(hidden=32, layers=4, intermediate=64), TOKENS, TOKENS["token_ids"]),
    "bert": (bert_classifier, dict(hidden=32, layers=3, intermediate=64),
             {**TOKENS, "segment_ids": np.zeros((8, 12), "int32")}, np.arange(8) % 2),
    "vit": (vit_classifier, dict(hidden=16, layers=3, intermediate=32),
            np.random.default_rng(1).normal(size=(8, 8, 8, 3)).astype("float32"),
            np.arange(8) % 2),
}


def expected_spec(layout_map, variable):
    layout = layout_map[variable.path]
    return tuple(layout.axes) if layout is not None else (None,) * len(variable.shape)


def assert_same_values(model, reference):
    assert [v.path for v in model.weights] == [v.path for v in reference.weights]
    for v, r in zip(model.weights, reference.weights):
        np.testing.assert_array_equal(np.asarray(v.value), np.asarray(r.value), err_msg=v.path)


def fit_one_step(model, x, y):
    model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("name", list(CASES))
def test_model_parallel_shards_as_the_layout_map_says(name):
    build, request_, x, y = CASES[name]
    small = build()
    before = [np.asarray(v.value).copy() for v in small.weights]
    reference = keras_lemon.expand_model(small, seed=0, **request_)
    layout_map = keras_lemon.distribution.get_layout_map(small, mesh())
    distribution = keras.distribution.ModelParallel(layout_map=layout_map,
                                                    batch_dim_name="batch")
    with distribution.scope():
        big = keras_lemon.expand_model(small, seed=0, **request_)
    sharded = 0
    for v in big.weights:
        spec = tuple(v.value.sharding.spec) + (None,) * (len(v.shape) - len(
            v.value.sharding.spec))
        assert spec == expected_spec(layout_map, v), v.path
        sharded += any(axis is not None for axis in spec)
    assert sharded >= 4 * request_["layers"]  # every block's projections, at least
    assert_same_values(big, reference)
    assert output_error(small, big, x) <= 1e-5
    for v, value in zip(small.weights, before):  # the source is untouched
        np.testing.assert_array_equal(np.asarray(v.value), value)
    with distribution.scope():
        fit_one_step(big, x, y)


def test_data_parallel_replicates_and_fits():
    small = llama_lm()
    distribution = keras.distribution.DataParallel(
        devices=keras.distribution.list_devices()[:8])
    with distribution.scope():
        big = keras_lemon.expand_model(small, hidden=32, layers=3, seed=0)
    assert all(v.value.sharding.is_fully_replicated for v in big.weights)
    assert len(big.weights[0].value.sharding.device_set) == 8
    assert output_error(small, big, TOKENS) <= 1e-5
    with distribution.scope():
        fit_one_step(big, TOKENS, TOKENS["token_ids"])


def test_bfloat16_model_parallel_keeps_dtype_and_layout():
    small = llama_lm("bfloat16")
    layout_map = keras_lemon.distribution.get_layout_map(keras_hub.models.LlamaCausalLM, mesh())
    with keras.distribution.ModelParallel(layout_map=layout_map,
                                          batch_dim_name="batch").scope():
        big = keras_lemon.expand_model(small, hidden=32, layers=3, seed=0)
    query = big.backbone.get_layer("transformer_layer_0")._self_attention_layer._query_dense
    assert str(query.kernel.value.dtype) == "bfloat16"
    assert tuple(query.kernel.value.sharding.spec) == ("model", "batch", None)
    assert output_error(small, big, TOKENS) <= keras_lemon.lossless.TOLERANCES["bfloat16"]


def test_layout_map_errors_name_the_model_and_the_choices():
    with pytest.raises(ValueError, match="MistralBackbone has no layout map.*BertBackbone "
                       "and ViTBackbone.*DataParallel"):
        keras_lemon.distribution.get_layout_map(keras_hub.models.MistralBackbone, mesh())
    with pytest.raises(ValueError, match="not 'tensor'"):
        keras_lemon.distribution.get_layout_map(keras_hub.models.BertBackbone, mesh(),
                                                model_parallel_dim_name="tensor")
