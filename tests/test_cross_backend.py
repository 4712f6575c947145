"""Same seed -> bit-identical expanded weights on TensorFlow, JAX and torch.

All expansion math is NumPy, so this holds exactly. The test starts one
process per backend (the Keras backend is fixed per process).
"""

import os
import subprocess
import sys

import keras
import pytest

HERE = os.path.dirname(__file__)


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="spawns all three backends itself; runs once, in the jax pass",
)
def test_same_seed_same_weights_on_every_backend():
    checksums = {}
    for backend in ("tensorflow", "jax", "torch"):
        env = {**os.environ, "KERAS_BACKEND": backend}
        result = subprocess.run(
            [sys.executable, os.path.join(HERE, "expand_checksum.py")],
            env=env, capture_output=True, text=True, timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        line = [l for l in result.stdout.splitlines() if l.startswith("CHECKSUM")][-1]
        checksums[backend] = line
    assert len(set(checksums.values())) == 1, checksums
