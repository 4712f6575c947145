"""GGUF sources (`keras_lemon.gguf`): a tiny llama GGUF written in the test.

The file is written with the `gguf` package as llama.cpp's converter does
(query and key rows permuted per head for its rotary layout), with a
byte-level BPE tokenizer over all 256 bytes. `gguf_to_hf_directory` must
give back the Hugging Face weights exactly, and `expand_preset` must take
the `.gguf` file as its source.
"""

import json
import os

import keras_hub
import numpy as np
import pytest
from conftest import TOLERANCE
from preset_builders import tree_digest
from safetensors.numpy import load_file

import keras_lemon
from keras_lemon.gguf import gguf_to_hf_directory

gguf = pytest.importorskip("gguf", reason="scripts/setup installs gguf; without it GGUF "
                                          "sources cannot be read at all")

LAYERS, HIDDEN, FFN, HEADS, KV_HEADS, EPS = 2, 16, 32, 4, 2, 1e-5


def _byte_tokens():
    """GPT-2's printable stand-ins for the 256 bytes (byte-level BPE)."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _permute(weight, heads):
    """llama.cpp's permutation of query / key rows (the inverse of ours)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]) \
        .swapaxes(1, 2).reshape(weight.shape)


def write_tiny_llama_gguf(path, seed=0):
    """Returns the Hugging Face-layout weights written (unpermuted)."""
    rng = np.random.default_rng(seed)
    tokens = ["<unk>", "<s>", "</s>"] + _byte_tokens() + ["Ġt", "he"]
    vocab = len(tokens)
    head_dim = HIDDEN // HEADS

    def normal(*shape):
        return rng.normal(0.0, 0.2, shape).astype(np.float32)

    hf = {"model.embed_tokens.weight": normal(vocab, HIDDEN),
          "model.norm.weight": (1 + normal(HIDDEN)).astype(np.float32)}
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(64)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(EPS)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (vocab - 3))  # 3: control (special)
    writer.add_token_merges(["Ġ t", "h e"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_tensor("token_embd.weight", hf["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", hf["model.norm.weight"])
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        block = {
            "attn_norm": ("input_layernorm", (1 + normal(HIDDEN)).astype(np.float32)),
            "ffn_norm": ("post_attention_layernorm", (1 + normal(HIDDEN)).astype(np.float32)),
            "attn_q": ("self_attn.q_proj", normal(HEADS * head_dim, HIDDEN)),
            "attn_k": ("self_attn.k_proj", normal(KV_HEADS * head_dim, HIDDEN)),
            "attn_v": ("self_attn.v_proj", normal(KV_HEADS * head_dim, HIDDEN)),
            "attn_output": ("self_attn.o_proj", normal(HIDDEN, HEADS * head_dim)),
            "ffn_gate": ("mlp.gate_proj", normal(FFN, HIDDEN)),
            "ffn_up": ("mlp.up_proj", normal(FFN, HIDDEN)),
            "ffn_down": ("mlp.down_proj", normal(HIDDEN, FFN)),
        }
        for kind, (hf_name, value) in block.items():
            hf[p + hf_name + ".weight"] = value
            stored = _permute(value, HEADS) if kind == "attn_q" else \
                _permute(value, KV_HEADS) if kind == "attn_k" else value
            writer.add_tensor(f"blk.{i}.{kind}.weight", stored)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hf


def test_gguf_to_hf_directory_gives_back_the_weights(tmp_path):
    path = str(tmp_path / "tiny.gguf")
    expected = write_tiny_llama_gguf(path)
    directory = gguf_to_hf_directory(path, str(tmp_path / "hf"))
    tensors = load_file(os.path.join(directory, "model.safetensors"))
    assert sorted(tensors) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(tensors[name], value, err_msg=name)
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (HEADS, KV_HEADS)
    assert config["tie_word_embeddings"] and np.isclose(config["rms_norm_eps"], EPS)
    backbone = keras_hub.models.Backbone.from_preset(directory)
    assert isinstance(backbone, keras_hub.models.Llama3Backbone)


def test_expand_preset_from_a_gguf_file(tmp_path):
    path = str(tmp_path / "tiny.gguf")
    write_tiny_llama_gguf(path)
    before = tree_digest(str(tmp_path))
    dst = str(tmp_path / "big")
    big = keras_lemon.expand_preset(path, dst, hidden=24, layers=3, seed=0)
    assert isinstance(big, keras_hub.models.Llama3Backbone)
    # The checkpoint's epsilon, not keras-hub's converter default (1e-6), scaled.
    assert np.isclose(big.layer_norm_epsilon, EPS * 16 / 24)
    record = keras_lemon.read_expansion(dst)
    assert record["source_format"] == "gguf" and record["lossless_error"] <= TOLERANCE
    assert "English sentences" in record["probe"]  # its own byte-level tokenizer
    reloaded = keras_hub.models.Backbone.from_preset(dst)
    assert reloaded.token_embedding.tie_weights  # kept although keras-hub's config drops it
    # The tokenizer is saved beside it. (keras-hub 0.32's Llama3Tokenizer does not
    # reload from a Keras preset unless its vocabulary has Llama 3's header
    # tokens: its config drops bos/eos/misc_special_tokens. Not ours to fix.)
    assert os.path.exists(os.path.join(dst, "tokenizer.json"))
    assert {k: v for k, v in tree_digest(str(tmp_path)).items() if k.startswith("tiny")} == before


def test_other_architectures_are_refused(tmp_path):
    path = str(tmp_path / "gpt2.gguf")
    writer = gguf.GGUFWriter(path, "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="gpt2.gguf.*architecture 'gpt2'.*'llama'"):
        keras_lemon.expand_preset(path, str(tmp_path / "dst"), layers=2)
    assert not os.path.exists(tmp_path / "dst")
