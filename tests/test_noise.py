"""LEMON's symmetry-breaking draws: chunked, threaded, reproducible."""

import concurrent.futures

import numpy as np

from keras_lemon.rules import registry


def test_uniform_noise_is_reproducible_and_independent_of_threads(monkeypatch):
    monkeypatch.setattr(registry, "NOISE_CHUNK", 1000)  # several chunks on a small array
    shape = (37, 101)
    threaded = registry.uniform_noise([5, 7], shape, 0.25)
    monkeypatch.setattr(registry, "_noise_pool", concurrent.futures.ThreadPoolExecutor(1))
    single = registry.uniform_noise([5, 7], shape, 0.25)
    np.testing.assert_array_equal(threaded, single)
    assert threaded.dtype == np.float32 and threaded.shape == shape
    assert -0.25 <= threaded.min() and threaded.max() < 0.25
    # Each chunk is its own stream: chunk c is default_rng(seed + [c]).
    flat = threaded.reshape(-1)
    expected = np.random.default_rng([5, 7, 2]).random(1000, dtype=np.float32)
    np.testing.assert_allclose(flat[2000:3000], (expected - 0.5) * np.float32(0.5), rtol=1e-6)
    assert abs(flat.std() - 0.25 / np.sqrt(3)) < 0.01
    assert not np.array_equal(registry.uniform_noise([5, 8], shape, 0.25), threaded)
