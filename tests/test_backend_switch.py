"""Expand on this pass's backend, save, reload on the other two backends.

Saved here: two presets written by `expand_preset` (BERT masked LM with its
preprocessor, ViT classifier) and two `.keras` files (an expanded keras-hub
text classifier and an expanded functional model of the user's). One process
per other backend (`backend_switch_check.py`) loads each and compares its
outputs with this backend's (max |diff| / max |output| <= 1e-5: float
round-off between backends).
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import user_models
from conftest import MODEL_BUILDERS
from conftest import inputs_for
from preset_builders import bert_masked_lm_preset
from preset_builders import vit_classifier_preset

import keras_lemon

HERE = os.path.dirname(os.path.abspath(__file__))
BACKENDS = ("tensorflow", "jax", "torch")


def _save_case(directory, manifest, name, fmt, model, inputs, class_name=None):
    if not isinstance(inputs, dict):
        inputs = {"x": inputs}
    np.savez(os.path.join(directory, f"{name}.inputs.npz"), **inputs)
    if list(inputs) == ["x"]:
        inputs = inputs["x"]
    outputs = keras.tree.flatten(model(inputs, training=False))
    np.savez(os.path.join(directory, f"{name}.outputs.npz"),
             **{f"y{i}": keras.ops.convert_to_numpy(o) for i, o in enumerate(outputs)})
    manifest.append({"path": name if fmt == "preset" else f"{name}.keras", "format": fmt,
                     "class": class_name, "inputs": f"{name}.inputs.npz",
                     "outputs": f"{name}.outputs.npz"})


def test_expanded_models_reload_on_the_other_backends(tmp_path):
    directory = str(tmp_path)
    manifest = []

    bert = bert_masked_lm_preset(os.path.join(directory, "bert_small"))
    big = keras_lemon.expand_preset(os.path.join(directory, "bert_small"),
                                    os.path.join(directory, "bert_big"), hidden=32, layers=3,
                                    seed=0)
    _save_case(directory, manifest, "bert_big", "preset", big, inputs_for(bert), "BertMaskedLM")

    vit = vit_classifier_preset(os.path.join(directory, "vit_small"))
    big = keras_lemon.expand_preset(os.path.join(directory, "vit_small"),
                                    os.path.join(directory, "vit_big"), hidden=24, layers=3,
                                    seed=0)
    _save_case(directory, manifest, "vit_big", "preset", big, inputs_for(vit),
               "ViTImageClassifier")

    classifier = MODEL_BUILDERS["BertTextClassifier"]()
    big = keras_lemon.expand_model(classifier, hidden=32, layers=4, seed=0)
    big.save(os.path.join(directory, "classifier.keras"))
    _save_case(directory, manifest, "classifier", "keras", big, inputs_for(classifier))

    functional = user_models.functional_vit()
    big = keras_lemon.expand_model(functional, hidden=40, heads=5, layers=3, seed=0)
    big.save(os.path.join(directory, "functional_vit.keras"))
    _save_case(directory, manifest, "functional_vit", "keras", big, user_models.image_inputs())

    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    for backend in BACKENDS:
        if backend == keras.backend.backend():
            continue
        done = subprocess.run(
            [sys.executable, os.path.join(HERE, "backend_switch_check.py"), directory],
            env={**os.environ, "KERAS_BACKEND": backend}, capture_output=True, text=True,
            timeout=600,
        )
        report = [line for line in done.stdout.splitlines() if line.startswith(backend)]
        print("\n".join(report))
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        assert len(report) == len(manifest) and all(line.endswith(" ok") for line in report)
