"""`expand_optimizer` (issue 15): the optimizer state follows the expansion.

The check needs no backend-specific gradient code: one optimizer step from a
zero state writes the gradient into the state (SGD momentum: `-lr g`; Adam:
`m = (1 - beta_1) g`, `v = (1 - beta_2) g^2`). So the state of the source
optimizer after one step at weights `W`, expanded, must equal the state of a
fresh optimizer after one step of the expanded model at the expanded `W`
(net2net: equal shares, where the expanded gradients are exactly `c g`).
"""

import keras
import keras_hub
import numpy as np
import pytest
from conftest import bert_backbone
from conftest import bert_inputs
from conftest import randomize
from conftest import vit_backbone
from conftest import vit_inputs
from user_models import functional_vit
from user_models import image_inputs

import keras_lemon

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
LLAMA = dict(vocabulary_size=50, num_layers=2, num_query_heads=4, num_key_value_heads=2,
             hidden_dim=16, intermediate_dim=32)


def _bert():
    model = keras_hub.models.BertTextClassifier(bert_backbone(dropout=0.0), num_classes=3,
                                                dropout=0.0)
    return randomize(model, 1), bert_inputs(seed=3), np.array([0, 1, 2])


def _vit():
    model = keras_hub.models.ViTImageClassifier(vit_backbone(), num_classes=3)
    return randomize(model, 1), vit_inputs(seed=3), np.array([2, 0, 1])


def _llama():
    model = randomize(keras_hub.models.LlamaCausalLM(
        randomize(keras_hub.models.LlamaBackbone(**LLAMA))), 1)
    rng = np.random.default_rng(3)
    x = {"token_ids": rng.integers(0, 50, (3, 10)).astype("int32"),
         "padding_mask": np.ones((3, 10), "int32")}
    return model, x, rng.integers(0, 50, (3, 10)).astype("int32")


MODELS = {"bert": _bert, "vit": _vit, "llama": _llama}


def _one_step(model, optimizer, x, y):
    """One training step from a zero state; the weights are put back."""
    weights = [keras.ops.convert_to_numpy(v) for v in model.weights]
    model.compile(optimizer=optimizer, loss=LOSS)
    model.train_on_batch(x, y)
    for variable, value in zip(model.weights, weights):
        variable.assign(value)
    return optimizer


def _slots(optimizer, name):
    return [None if s is None else keras.ops.convert_to_numpy(s)
            for s in getattr(optimizer, name)]


def _assert_states_match(resumed, fresh, names, skip=()):
    """Slot by slot, relative to the largest entry of the variable's fresh
    slot (floored at 1e-3 of the largest over all variables: tiny gradients
    are float32 round-off)."""
    for name in names:
        ours, theirs = _slots(resumed, name), _slots(fresh, name)
        scale = max(np.abs(t).max() for t in theirs)
        for i, (a, b) in enumerate(zip(ours, theirs)):
            if i in skip:
                continue
            floor = max(np.abs(b).max(), 1e-3 * scale)
            error = np.abs(a - b).max() / floor
            assert error < 1e-3, (name, resumed._trainable_variables[i].path, error)


@pytest.mark.parametrize("family", list(MODELS))
def test_expanded_adam_state_is_the_state_of_the_expanded_gradients(family):
    source, x, y = MODELS[family]()
    adam = _one_step(source, keras.optimizers.Adam(1e-3), x, y)
    big = keras_lemon.expand_model(source, hidden=32, method="net2net")
    resumed = keras_lemon.expand_optimizer(adam, source, big)
    fresh = _one_step(big, keras.optimizers.Adam(1e-3), x, y)

    assert type(resumed) is type(adam)  # on torch: a backend subclass of Adam
    assert int(resumed.iterations) == 1
    assert resumed.get_config() == adam.get_config()
    _assert_states_match(resumed, fresh, ["_momentums", "_velocities"])


def test_sgd_momentum_and_new_blocks():
    # Depth too (pre-LN ViT, 2 -> 4 blocks): a new block's output projections
    # are zero, so the old blocks' gradients are unchanged; the new blocks'
    # weights have no history: their momentum starts at zero.
    source, x, y = _vit()
    sgd = _one_step(source, keras.optimizers.SGD(0.1, momentum=0.9), x, y)
    big = keras_lemon.expand_model(source, hidden=32, layers=4, method="net2net")
    resumed = keras_lemon.expand_optimizer(sgd, source, big)
    fresh = _one_step(big, keras.optimizers.SGD(0.1, momentum=0.9), x, y)

    momentum = _slots(resumed, "momentums")
    new = [i for i, m in enumerate(momentum) if not m.any()]
    encoder = big.backbone.get_layer("vit_encoder")
    block_weights = len(encoder.encoder_layers[1].trainable_variables)
    assert len(new) == 2 * block_weights
    _assert_states_match(resumed, fresh, ["momentums"], skip=set(new))


def test_round_trip_and_resumed_training(tmp_path):
    # A functional model: keras-hub tasks override compile() and are not
    # recompiled by load_model (Keras warns), so their optimizer is not saved.
    source = randomize(functional_vit(num_classes=3), 1)
    x, y = image_inputs(), np.array([2, 0, 1])
    adamw = keras.optimizers.AdamW(1e-3, weight_decay=0.01)
    adamw.exclude_from_weight_decay(var_names=["gamma", "beta"])
    source.compile(optimizer=adamw, loss=LOSS)
    source.fit(x, y, epochs=2, verbose=0)
    big = keras_lemon.expand_model(source, hidden=32, layers=3, seed=0)
    resumed = keras_lemon.expand_optimizer(source.optimizer, source, big)

    assert int(resumed.iterations) == 2
    assert resumed._exclude_from_weight_decay_pattern == adamw._exclude_from_weight_decay_pattern
    big.compile(optimizer=resumed, loss=LOSS)
    path = str(tmp_path / "big.keras")
    big.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, keras.optimizers.AdamW)
    assert len(loaded.optimizer.variables) == len(resumed.variables)
    for a, b in zip(resumed.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                      keras.ops.convert_to_numpy(b))
    loaded.fit(x, y, epochs=3, verbose=0)
    assert int(loaded.optimizer.iterations) == 5

    # Training the resumed optimizer leaves the source's state alone (on JAX
    # a shared buffer would be donated by the train step): expand it again.
    state = [keras.ops.convert_to_numpy(v) for v in source.optimizer.variables]
    big.fit(x, y, epochs=2, verbose=0)
    again = keras_lemon.expand_optimizer(source.optimizer, source, big)
    assert int(again.iterations) == 2
    for a, b in zip(state, source.optimizer.variables):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))


def test_loss_scale_optimizer_is_unwrapped_and_wrapped_again():
    # What compile makes under mixed_float16: the inner state expands as
    # usual, the loss scale and its step counter carry on.
    source, x, y = _bert()
    scaled = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-3),
                                                 initial_scale=2.0**10)
    _one_step(source, scaled, x, y)
    scaled.dynamic_scale.assign(64.0)
    big = keras_lemon.expand_model(source, hidden=32, method="net2net")
    resumed = keras_lemon.expand_optimizer(scaled, source, big)
    plain = keras_lemon.expand_optimizer(scaled.inner_optimizer, source, big)

    assert isinstance(resumed, keras.optimizers.LossScaleOptimizer)
    assert float(resumed.dynamic_scale) == 64.0 and resumed.initial_scale == 2.0**10
    assert int(resumed.step_counter) == int(scaled.step_counter)
    for a, b in zip(resumed.inner_optimizer.variables, plain.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                      keras.ops.convert_to_numpy(b))
    big.compile(optimizer=resumed, loss=LOSS)
    big.train_on_batch(x, y)


def test_weight_decay_exclusions_by_variable_follow_the_variables():
    source, x, y = _bert()
    adamw = keras.optimizers.AdamW(1e-3)
    excluded = source.backbone.get_layer("token_embedding").embeddings
    adamw.exclude_from_weight_decay(var_list=[excluded])
    _one_step(source, adamw, x, y)
    big = keras_lemon.expand_model(source, hidden=32, seed=0)
    resumed = keras_lemon.expand_optimizer(adamw, source, big)
    target = big.backbone.get_layer("token_embedding").embeddings
    assert resumed._use_weight_decay(source.backbone.get_layer("token_embedding").embeddings)
    assert not resumed._use_weight_decay(target)
    kernel = big.backbone.transformer_layers[0]._feedforward_output_dense.kernel
    assert resumed._use_weight_decay(kernel)


def test_reloaded_expanded_model_needs_its_request(tmp_path):
    source, x, y = _bert()
    adam = _one_step(source, keras.optimizers.Adam(1e-3), x, y)
    big = keras_lemon.expand_model(source, hidden=32, layers=3, placement="stack", seed=0)
    path = str(tmp_path / "big.keras")
    big.save(path)
    loaded = keras.saving.load_model(path)
    # Sizes come from the model; the placement must be restated.
    resumed = keras_lemon.expand_optimizer(adam, source, loaded, placement="stack")
    expected = keras_lemon.expand_optimizer(adam, source, big)
    for a, b in zip(resumed.variables, expected.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                      keras.ops.convert_to_numpy(b))


def test_bad_inputs_are_refused():
    source, x, y = _bert()
    big = keras_lemon.expand_model(source, hidden=32, seed=0, verify=False)
    unbuilt = keras.optimizers.Adam()
    with pytest.raises(ValueError, match="Adam optimizer is not built for .*BertTextClassifier"
                       "|Adam optimizer is not built for the trainable variables"):
        keras_lemon.expand_optimizer(unbuilt, source, big)
    other, _, _ = _vit()
    for_other = keras.optimizers.Adam()
    for_other.build(other.trainable_variables)
    with pytest.raises(ValueError, match="not built for the trainable variables.*missing"):
        keras_lemon.expand_optimizer(for_other, source, big)

    class MyAdam(keras.optimizers.Adam):
        pass

    for unknown in (keras.optimizers.Adafactor(), MyAdam()):
        unknown.build(source.trainable_variables)
        with pytest.raises(ValueError, match=f"no rule for optimizer class {type(unknown).__name__}"):
            keras_lemon.expand_optimizer(unknown, source, big)
    scaled = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adafactor())
    scaled.build(source.trainable_variables)
    with pytest.raises(ValueError, match="no rule for optimizer class Adafactor"):
        keras_lemon.expand_optimizer(scaled, source, big)
    ema = keras.optimizers.Adam(use_ema=True)
    ema.build(source.trainable_variables)
    with pytest.raises(ValueError, match="use_ema is not supported"):
        keras_lemon.expand_optimizer(ema, source, big)
    with pytest.raises(ValueError, match="expected a keras.optimizers.Optimizer, got str"):
        keras_lemon.expand_optimizer("adam", source, big)
    adam = keras.optimizers.Adam()
    adam.build(source.trainable_variables)
    with pytest.raises(ValueError, match=r"not what the expansion request makes.*"
                       r"shape \(50, 32\), the request makes \(50, 48\).*hidden="):
        keras_lemon.expand_optimizer(adam, source, big, hidden=48)


def test_bfloat16_models_get_the_float32_rule():
    # The maps come from probes, not from the weights: a bfloat16 model's
    # slots get the same values as a float32 model's (rounded to bfloat16).
    states = {}
    for dtype in ("float32", "mixed_bfloat16", "bfloat16"):
        source = bert_backbone(dropout=0.0)
        if dtype != "float32":
            config = source.get_config()
            source = randomize(keras_hub.models.BertBackbone.from_config({**config, "dtype": dtype}))
        adam = keras.optimizers.Adam()
        adam.build(source.trainable_variables)
        rng = np.random.default_rng(0)
        for m, v in zip(adam._momentums, adam._velocities):
            m.assign(rng.normal(size=m.shape))
            v.assign(rng.random(size=v.shape))
        big = keras_lemon.expand_model(source, hidden=32, layers=3, seed=0, verify=False)
        resumed = keras_lemon.expand_optimizer(adam, source, big)
        states[dtype] = [keras.ops.convert_to_numpy(keras.ops.cast(s, "float32"))
                         for s in resumed._momentums + resumed._velocities]
    assert resumed._momentums[0].dtype == "bfloat16"
    for dtype, rtol in (("mixed_bfloat16", 0), ("bfloat16", 1e-2)):
        for a, b in zip(states[dtype], states["float32"]):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-6 if rtol else 0)
