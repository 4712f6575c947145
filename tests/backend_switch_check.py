"""Loads what another backend expanded and saved; compares with its outputs.

Run by `test_backend_switch.py` as `KERAS_BACKEND=<other> python
backend_switch_check.py DIR`. DIR holds `manifest.json` (one entry per saved
model: how to load it, its inputs and expected outputs as `.npz`). Prints one
line per model and exits 1 if any differs by more than the tolerance.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import user_models  # noqa: E402, F401  (registers the custom layers of the .keras files)
from conftest import relative_error  # noqa: E402

TOLERANCE = 1e-5


def load(entry, directory):
    path = os.path.join(directory, entry["path"])
    if entry["format"] == "preset":
        return getattr(keras_hub.models, entry["class"]).from_preset(path)
    return keras.saving.load_model(path)


def flatten(outputs):
    return [keras.ops.convert_to_numpy(o) for o in keras.tree.flatten(outputs)]


def main(directory):
    with open(os.path.join(directory, "manifest.json")) as f:
        manifest = json.load(f)
    failed = False
    for entry in manifest:
        model = load(entry, directory)
        with np.load(os.path.join(directory, entry["inputs"])) as data:
            inputs = {k: data[k] for k in data.files}
        if list(inputs) == ["x"]:
            inputs = inputs["x"]
        with np.load(os.path.join(directory, entry["outputs"])) as data:
            expected = [data[f"y{i}"] for i in range(len(data.files))]
        actual = flatten(model(inputs, training=False))
        ok = len(actual) == len(expected)
        error = max(relative_error(e, a) for a, e in zip(actual, expected)) if ok else float("inf")
        ok = ok and error <= TOLERANCE
        failed |= not ok
        print(f"{keras.backend.backend()} {entry['path']}: {error:.2e} {'ok' if ok else 'FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
