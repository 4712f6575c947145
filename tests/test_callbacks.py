"""keras_lemon.callbacks, each in a real `fit` on a small expanded model."""

import keras
import numpy as np
import pytest
from conftest import randomize
from keras import layers
from user_models import residual_mlp

import keras_lemon
from keras_lemon.callbacks import ComputeBudget
from keras_lemon.callbacks import LemonEpochScheduler
from keras_lemon.callbacks import LosslessCheck
from keras_lemon.callbacks import SymmetryMonitor
from keras_lemon.schedules import LemonSchedule


def small_model():
    return randomize(residual_mlp(hidden=8, outputs=1, pooled_head=True))


def data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6, 4)).astype("float32")
    return x, (x.sum(axis=(1, 2))[:, None] / 5.0).astype("float32")


def test_epoch_scheduler_sets_and_logs_the_rate():
    model = keras_lemon.expand_model(small_model(), hidden=16, seed=0)
    schedule = LemonSchedule.from_recipe(1e-2, total_steps=10, fraction=0.5, warmup_steps=2,
                                         initial_learning_rate=1e-4, end_learning_rate=1e-3)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    x, y = data()
    history = model.fit(x, y, epochs=7, batch_size=8, verbose=0,
                        callbacks=[LemonEpochScheduler(schedule)])
    expected = [float(keras.ops.convert_to_numpy(schedule(e))) for e in range(7)]
    np.testing.assert_allclose(history.history["learning_rate"], expected, rtol=1e-5)
    assert expected[0] == pytest.approx(1e-4) and expected[2] == pytest.approx(1e-2)
    assert expected[5:] == pytest.approx([1e-3, 1e-3])


def test_epoch_scheduler_refuses_a_step_schedule():
    model = small_model()
    model.compile(optimizer=keras.optimizers.SGD(LemonSchedule(1e-2, 10)), loss="mse")
    x, y = data(8)
    with pytest.raises(ValueError, match="per-step schedule"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[LemonEpochScheduler(lambda e: 1e-3)])


def test_compute_budget_stops_at_the_end_of_the_schedule():
    model = keras_lemon.expand_model(small_model(), hidden=16, layers=3, seed=0)
    schedule = LemonSchedule.from_recipe(1e-3, total_steps=40, fraction=0.25, warmup_steps=2)
    model.compile(optimizer=keras.optimizers.AdamW(schedule), loss="mse")
    x, y = data()
    budget = ComputeBudget(scratch_steps=40, schedule=schedule, flops_per_step=1000.0)
    history = model.fit(x, y, epochs=20, batch_size=8, verbose=0, callbacks=[budget])
    # 4 steps per epoch, the schedule ends after 10 steps: stop in epoch 3.
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 10
    assert len(history.history["loss"]) == 3
    assert history.history["budget_steps"] == [4, 8, 10]
    assert history.history["budget_fraction"][-1] == pytest.approx(0.25)
    assert history.history["budget_flops"][-1] == pytest.approx(10_000.0)


def test_resumed_optimizer_schedule_and_budget_count_the_expanded_steps():
    # expand_optimizer carries the step count (12 source steps); the schedule
    # starts there, and the budget counts only the expanded model's steps.
    source = small_model()
    source.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="mse")
    x, y = data()
    source.fit(x, y, epochs=3, batch_size=8, verbose=0)
    model = keras_lemon.expand_model(source, hidden=16, layers=3, seed=0)
    optimizer = keras_lemon.expand_optimizer(source.optimizer, source, model)
    start = int(keras.ops.convert_to_numpy(optimizer.iterations))
    assert start == 12
    schedule = LemonSchedule.from_recipe(1e-3, total_steps=40, fraction=0.25, warmup_steps=2,
                                         start_step=start)
    optimizer.learning_rate = schedule
    model.compile(optimizer=optimizer, loss="mse")
    history = model.fit(x, y, epochs=20, batch_size=8, verbose=0,
                        callbacks=[ComputeBudget(scratch_steps=40, schedule=schedule)])
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 22
    assert history.history["budget_steps"] == [4, 8, 10]


def test_compute_budget_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        ComputeBudget(scratch_steps=10)
    with pytest.raises(ValueError, match="positive"):
        ComputeBudget(scratch_steps=0, stop_steps=5)


def test_lossless_check_passes_and_logs():
    source = small_model()
    model = keras_lemon.expand_model(source, hidden=16, layers=3, seed=0)
    model.compile(optimizer="adam", loss="mse")
    x, y = data()
    history = model.fit(x, y, epochs=1, batch_size=8, verbose=0,
                        callbacks=[LosslessCheck(source, x[:4])])
    assert history.history["lossless_error"][0] <= 1e-5


def test_lossless_check_fails_loudly():
    source = small_model()
    model = keras_lemon.expand_model(source, hidden=16, seed=0)
    dense = [layer for layer in model.layers if isinstance(layer, layers.Dense)][1]
    dense.kernel.assign(keras.ops.zeros(dense.kernel.shape))  # a mistake after expansion
    model.compile(optimizer="adam", loss="mse")
    x, y = data()
    with pytest.raises(ValueError, match="differs from its source"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[LosslessCheck(source, x[:4])])


@pytest.mark.parametrize("method", ["lemon", "net2net"])
def test_symmetry_monitor(method):
    source = small_model()
    model = keras_lemon.expand_model(source, hidden=16, seed=0, method=method)
    monitor = SymmetryMonitor(source)
    monitor.set_model(model)
    assert monitor.distance() == pytest.approx(0.0, abs=1e-12)  # copies start identical
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    x, y = data()
    history = model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[monitor])
    assert np.isfinite(history.history["loss"]).all()
    distances = history.history["symmetry_distance"]
    if method == "lemon":
        # Unequal fan-in shares give the copies different gradients.
        assert distances[-1] > 1e-4 and distances[-1] > distances[0]
    else:
        # Net2Net's equal split keeps the copies identical: no symmetry breaking.
        assert max(distances) < 1e-9
