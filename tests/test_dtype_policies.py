"""Dtype policies (issue 16): bfloat16, float16 and the mixed policies.

The expanded model keeps its source's policy (variable and compute dtypes,
layer by layer); the expansion's math runs in float32 or float64 and is cast
once; the lossless check judges at the source's least precise compute dtype
(`keras_lemon.lossless.TOLERANCES`, measured in `benchmarks/dtype_policies.py`).
"""

import json

import keras
import keras_hub
import numpy as np
import pytest
from conftest import randomize

import keras_lemon
from keras_lemon.lossless import TOLERANCES
from keras_lemon.lossless import check_lossless
from keras_lemon.lossless import dtype_tolerance
from keras_lemon.lossless import least_precise_compute_dtype
from keras_lemon.lossless import output_error

POLICIES = ["bfloat16", "mixed_bfloat16", "float16", "mixed_float16"]
TOKENS = {"token_ids": np.random.default_rng(0).integers(1, 50, (2, 12)).astype("int32"),
          "padding_mask": np.ones((2, 12), "int32")}


def bert(dtype):
    return randomize(keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=12, dtype=dtype))


def llama_lm(dtype):
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=50, num_layers=2, num_query_heads=4, num_key_value_heads=2,
        hidden_dim=16, intermediate_dim=32, dtype=dtype)
    return randomize(keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None))


def policies_by_path(model):
    return {layer.path: layer.dtype_policy.name for layer in model._flatten_layers()
            if hasattr(layer, "dtype_policy")}


def inputs_for(model):
    if isinstance(model, keras_hub.models.CausalLM):
        return TOKENS
    return {**TOKENS, "segment_ids": np.zeros((2, 12), "int32")}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("build,request_", [
    (bert, dict(hidden=32, layers=4)),
    (llama_lm, dict(hidden=32, layers=3, intermediate=48)),
], ids=["bert", "llama_causal_lm"])
def test_low_precision_models_expand_keep_their_policy_and_pass_their_dtype_tolerance(
        build, request_, policy):
    small = build(policy)
    before = [keras.ops.convert_to_numpy(v).copy() for v in small.weights]
    big = keras_lemon.expand_model(small, seed=0, **request_)  # verify=True: the check passes
    source_dtype = keras.DTypePolicy(policy).variable_dtype
    assert big.dtype_policy.name == policy
    assert {v.dtype for v in big.weights if "float" in str(v.dtype)} == {source_dtype}
    # Every layer the source has keeps its own policy (keras-hub pins some to float32).
    small_policies, big_policies = policies_by_path(small), policies_by_path(big)
    assert {p: big_policies[p] for p in small_policies if p in big_policies} == {
        p: small_policies[p] for p in small_policies if p in big_policies}
    tolerance, dtype = dtype_tolerance(small)
    assert dtype == ("bfloat16" if "bfloat16" in policy else "float16")
    error = output_error(small, big, inputs_for(small)) if build is llama_lm else None
    if error is not None:
        # The 16-bit round-off is visible (not an exact copy) yet far inside the tolerance.
        assert 0 < error <= tolerance / 2, error
    for v, value in zip(small.weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), value)


@pytest.mark.parametrize("policy", ["bfloat16", "float16"])
def test_math_runs_in_float32_and_is_cast_once(policy):
    """The bf16 expansion equals the float32 expansion of the same weights, cast once."""
    small = bert(policy)
    small32 = bert("float32")
    for v, w in zip(small32.weights, small.weights):
        v.assign(keras.ops.convert_to_numpy(keras.ops.cast(w, "float32")))
    big = keras_lemon.expand_model(small, hidden=32, layers=4, seed=3)
    big32 = keras_lemon.expand_model(small32, hidden=32, layers=4, seed=3)
    assert [v.path for v in big.weights] == [v.path for v in big32.weights]
    for v, v32 in zip(big.weights, big32.weights):
        expected = keras.ops.convert_to_numpy(keras.ops.cast(v32, policy)).astype("float32")
        actual = keras.ops.convert_to_numpy(keras.ops.cast(v, "float32"))
        np.testing.assert_array_equal(actual, expected, err_msg=v.path)


def test_least_precise_layer_decides_the_tolerance():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, dtype="mixed_float16")(inputs)
    outputs = keras.layers.Dense(4, dtype="float32")(hidden)
    model = keras.Model(inputs, outputs)
    assert least_precise_compute_dtype(model) == "float16"
    assert dtype_tolerance(model) == (TOLERANCES["float16"], "float16")
    assert dtype_tolerance(keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])) == (
        1e-4, "float32")
    # The tolerances are ordered by precision and each is far below a wrong
    # expansion's error (0.1 to 1 of the output scale).
    assert TOLERANCES["float32"] < TOLERANCES["float16"] < TOLERANCES["bfloat16"] <= 0.125


def test_error_names_the_dtype_it_judged():
    small = bert("bfloat16")
    big = keras_lemon.expand_model(small, hidden=32, seed=0)
    kernel = big.get_layer("transformer_layer_0")._feedforward_output_dense.kernel
    kernel.assign(kernel * 3.0)  # a wrong expansion, well beyond bf16 round-off
    with pytest.raises(keras_lemon.ExpansionError, match=r"tolerance for outputs computed in "
                       r"bfloat16.*float32 copy of it gives a tighter check"):
        check_lossless(small, big, inputs_for(small), None, "bert", lambda a: np.concatenate(
            [a, a], axis=-1))


def test_float32_models_keep_the_tight_tolerance_and_error_text():
    small = bert("float32")
    big = keras_lemon.expand_model(small, hidden=32, seed=0)
    kernel = big.get_layer("transformer_layer_0")._feedforward_output_dense.kernel
    kernel.assign(kernel * (1 + 1e-3))  # invisible in bf16, caught in float32
    with pytest.raises(keras_lemon.ExpansionError, match=r"> 0\.0001, the tolerance for "
                       r"outputs computed in float32") as caught:
        check_lossless(small, big, inputs_for(small), None, "bert", lambda a: np.concatenate(
            [a, a], axis=-1))
    assert "tighter" not in str(caught.value)


def test_lossless_check_callback_judges_at_the_source_dtype():
    small = llama_lm("mixed_bfloat16")
    big = keras_lemon.expand_model(small, hidden=32, seed=0)
    check = keras_lemon.callbacks.LosslessCheck(small, TOKENS)
    assert check.tolerance == TOLERANCES["bfloat16"]
    assert keras_lemon.callbacks.LosslessCheck(bert("float32"), None).tolerance == 1e-5
    check.set_model(big)
    check.on_train_begin()  # passes at bf16's tolerance, though float32's would fail:
    assert 1e-5 < check.error <= TOLERANCES["bfloat16"]
    head = big.backbone.token_embedding.embeddings
    head.assign(head * 2.0)
    with pytest.raises(ValueError, match="differs from its source"):
        check.on_train_begin()


def test_functional_model_built_under_a_global_mixed_policy():
    """keras.io's recipe: `set_dtype_policy("mixed_bfloat16")`, then build; the
    expansion may run after the global policy is back to float32."""
    from user_models import functional_vit
    from user_models import image_inputs

    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        small = randomize(functional_vit())
    finally:
        keras.config.set_dtype_policy("float32")
    big = keras_lemon.expand_model(small, hidden=24, layers=3, seed=0)
    small_policies, big_policies = policies_by_path(small), policies_by_path(big)
    assert set(big_policies.values()) == set(small_policies.values()) == {"mixed_bfloat16"}
    assert all(v.dtype == "float32" for v in big.weights)
    error = output_error(small, big, image_inputs())
    assert 0 < error <= TOLERANCES["bfloat16"] / 2, error


def test_bfloat16_preset_expands_and_records_its_dtype_and_tolerance(tmp_path):
    from preset_builders import bert_tokenizer

    small = bert("bfloat16")
    small.save_to_preset(str(tmp_path / "small"))
    bert_tokenizer().save_to_preset(str(tmp_path / "small"))
    keras_lemon.expand_preset(str(tmp_path / "small"), str(tmp_path / "big"), hidden=32,
                              layers=3, seed=0)
    record = keras_lemon.read_expansion(str(tmp_path / "big"))
    assert record["compute_dtype"] == "bfloat16"
    assert record["tolerance"] == TOLERANCES["bfloat16"]
    assert 0 < record["lossless_error"] <= record["tolerance"]
    # Written in bfloat16 (keras-hub's from_preset would load it in float32
    # unless told; keras_lemon loads a preset in the dtype it was saved in).
    with open(tmp_path / "big" / "config.json") as f:
        assert json.load(f)["config"]["dtype"]["config"]["name"] == "bfloat16"
    reloaded = keras_lemon.presets.LoadedPreset(str(tmp_path / "big")).model
    assert {str(v.dtype) for v in reloaded.weights} == {"bfloat16"}
    assert reloaded.num_layers == 3
