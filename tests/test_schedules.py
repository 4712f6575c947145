"""LemonSchedule: closed form, compression, serialization, errors."""

import math
import os

import keras
import numpy as np
import pytest

from keras_lemon.schedules import LemonSchedule


def _value(schedule, step):
    return float(keras.ops.convert_to_numpy(schedule(step)))


def closed_form(step, peak, warmup, decay, initial, end, shape):
    if step < warmup:
        return initial + (peak - initial) * step / warmup
    p = min((step - warmup) / decay, 1.0)
    if shape == "cosine":
        return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * p))
    return peak + (end - peak) * p


@pytest.mark.parametrize("shape", ["cosine", "linear"])
def test_values_at_key_steps(shape):
    peak, warmup, decay, initial, end = 1e-3, 10, 90, 1e-6, 1e-5
    schedule = LemonSchedule(peak, decay_steps=decay, warmup_steps=warmup,
                             initial_learning_rate=initial, decay_shape=shape,
                             end_learning_rate=end)
    for step in (0, 5, 10, 30, 55, 99, 100, 101, 1000):
        expected = closed_form(step, peak, warmup, decay, initial, end, shape)
        assert _value(schedule, step) == pytest.approx(expected, rel=1e-5, abs=1e-9), step
    assert _value(schedule, 0) == pytest.approx(initial, rel=1e-5)  # warmup start
    assert _value(schedule, warmup) == pytest.approx(peak, rel=1e-5)  # warmup end = peak
    mid = closed_form(55, peak, warmup, decay, initial, end, shape)
    assert _value(schedule, 55) == pytest.approx(mid, rel=1e-5)
    assert _value(schedule, 100) == pytest.approx(end, rel=1e-5)  # end of decay
    assert _value(schedule, 10_000) == pytest.approx(end, rel=1e-5)  # hold


def test_monotone():
    schedule = LemonSchedule(2e-4, decay_steps=50, warmup_steps=20, alpha=0.1)
    values = np.array([_value(schedule, s) for s in range(120)])
    assert np.all(np.diff(values[:21]) > 0)
    assert np.all(np.diff(values[20:]) <= 1e-12)


def test_from_recipe_compresses_the_decay():
    # LEMON's ViT: 300 epochs from scratch, 130 for the expanded model.
    schedule = LemonSchedule.from_recipe(
        1e-3, total_steps=300, fraction=130 / 300, warmup_steps=5,
        initial_learning_rate=1e-6, end_learning_rate=1e-5)
    assert (schedule.warmup_steps, schedule.decay_steps, schedule.total_steps) == (5, 125, 130)
    assert _value(schedule, 5) == pytest.approx(1e-3, rel=1e-5)  # same peak
    assert _value(schedule, 130) == pytest.approx(1e-5, rel=1e-5)
    assert _value(schedule, 299) == pytest.approx(1e-5, rel=1e-5)


def test_compressed_keras_cosine_decay_equals_hand_built():
    keras_schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=1e-6, decay_steps=900, alpha=0.1,
        warmup_target=2e-4, warmup_steps=100)
    compressed = LemonSchedule.from_schedule(keras_schedule, fraction=0.5)
    hand = LemonSchedule(2e-4, decay_steps=400, warmup_steps=100,
                         initial_learning_rate=1e-6, end_learning_rate=2e-5)
    for step in range(0, 1200, 7):
        assert _value(compressed, step) == pytest.approx(_value(hand, step), rel=1e-6)
    # Uncompressed, it is Keras' own schedule.
    same = LemonSchedule.from_schedule(keras_schedule, fraction=1.0)
    for step in range(0, 1000, 13):
        assert _value(same, step) == pytest.approx(_value(keras_schedule, step), rel=1e-4)


def test_compressed_linear_polynomial_decay():
    keras_schedule = keras.optimizers.schedules.PolynomialDecay(1e-3, 100, 1e-4)
    compressed = LemonSchedule.from_schedule(keras_schedule, fraction=0.25)
    assert compressed.total_steps == 25
    for step in range(0, 60, 3):
        expected = _value(keras_schedule, min(step * 4, 100))
        assert _value(compressed, step) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="power=1"):
        LemonSchedule.from_schedule(keras.optimizers.schedules.PolynomialDecay(1e-3, 100, power=2.0), 0.5)
    with pytest.raises(TypeError, match="CosineDecay"):
        LemonSchedule.from_schedule(keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.9), 0.5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(peak_learning_rate=1e-3, decay_steps=-5), "decay_steps must be >= 1"),
    (dict(peak_learning_rate=1e-3, decay_steps=10, warmup_steps=-1), "warmup_steps must be >= 0"),
    (dict(peak_learning_rate=1e-3, decay_steps=10, end_learning_rate=1e-2), "above peak"),
    (dict(peak_learning_rate=1e-3, decay_steps=10, alpha=0.1, end_learning_rate=0.0), "not both"),
    (dict(peak_learning_rate=1e-3, decay_steps=10, decay_shape="step"), "decay_shape"),
    (dict(peak_learning_rate=0.0, decay_steps=10), "peak_learning_rate must be > 0"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LemonSchedule(**kwargs)


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_bad_fraction(fraction):
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        LemonSchedule.from_recipe(1e-3, total_steps=100, fraction=fraction)


def test_fraction_shorter_than_warmup():
    with pytest.raises(ValueError, match="nothing would be left"):
        LemonSchedule.from_recipe(1e-3, total_steps=100, fraction=0.05, warmup_steps=10)


def test_start_step_shifts_the_schedule():
    plain = LemonSchedule.from_recipe(1e-3, total_steps=100, fraction=0.5, warmup_steps=10,
                                      initial_learning_rate=1e-5, alpha=0.1)
    shifted = LemonSchedule.from_schedule(plain, 1.0, start_step=1000)
    steps = np.array([0, 5, 10, 30, 50, 80])
    np.testing.assert_allclose([_value(shifted, s + 1000) for s in steps],
                               [_value(plain, s) for s in steps], rtol=1e-6)
    np.testing.assert_allclose([_value(shifted, 0), _value(shifted, 999)], [1e-5, 1e-5], rtol=1e-6)
    assert LemonSchedule.from_config(shifted.get_config()).start_step == 1000
    with pytest.raises(ValueError, match="start_step must be >= 0"):
        LemonSchedule(1e-3, decay_steps=10, start_step=-1)


def test_config_round_trip():
    schedule = LemonSchedule(1e-3, 50, warmup_steps=5, decay_shape="linear", alpha=0.1)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, LemonSchedule)
    assert restored.get_config() == schedule.get_config()


def test_compiled_model_saves_and_reloads(tmp_path):
    schedule = LemonSchedule.from_recipe(1e-2, total_steps=40, fraction=0.5, warmup_steps=4)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.AdamW(schedule), loss="mse")
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)  # 8 steps, inside a compiled train step
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    restored = reloaded.optimizer._learning_rate
    assert isinstance(restored, LemonSchedule)
    assert restored.get_config() == schedule.get_config()
    assert int(keras.ops.convert_to_numpy(reloaded.optimizer.iterations)) == 8
    for a, b in zip(model.optimizer.variables, reloaded.optimizer.variables):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    assert float(keras.ops.convert_to_numpy(reloaded.optimizer.learning_rate)) == pytest.approx(
        _value(schedule, 8), rel=1e-5)
    reloaded.fit(x, y, batch_size=4, epochs=1, verbose=0)  # trains on after reload
