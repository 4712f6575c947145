"""GGUF checkpoints (llama.cpp's format) as Hugging Face directories.

Users do have GGUF files: `expand_preset` and `keras-lemon expand` accept a
`.gguf` file as their source. It is dequantized to float32 and written as a
Hugging Face directory (`config.json`, `model.safetensors`, `tokenizer.json`,
`tokenizer_config.json`) that keras-hub's own converter loads; the expanded
model is written as a Keras preset, like any other.

Supported: architecture `llama` (Llama 2/3, SmolLM2, TinyLlama...) with a
byte-level BPE (`gpt2`) tokenizer. llama.cpp stores the query and key
projections permuted for its rotary layout; they are permuted back per head.
Reading needs the `gguf` package (`pip install gguf`).

Example:

```python
import keras_lemon
keras_lemon.expand_preset("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-270m", layers=60)
```
"""

import json
import os

import numpy as np

from keras_lemon.rules.registry import ExpansionError

#: GGUF block tensor name -> Hugging Face Llama name (`model.layers.{i}.` prefix).
_LLAMA_BLOCK = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_CONTROL_TOKEN = 3  # tokenizer.ggml.token_type of special tokens


def _reader(path):
    try:
        import gguf
    except ImportError as error:  # pragma: no cover - gguf is installed by scripts/setup
        raise ValueError(
            f"Reading '{path}' needs the gguf package: pip install gguf.") from error
    try:
        return gguf, gguf.GGUFReader(path)
    except (ValueError, OSError) as error:
        raise ValueError(f"'{path}' is not a readable GGUF file ({error}).") from error


def _unpermute(weight, heads):
    """Undoes llama.cpp's rotary permutation of a query or key projection (rows per head)."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]) \
        .swapaxes(1, 2).reshape(weight.shape)


def gguf_to_hf_directory(path, directory):
    """Writes a Llama GGUF file as a Hugging Face directory keras-hub can load.

    Args:
        path: the `.gguf` file.
        directory: where to write `config.json`, `model.safetensors`,
            `tokenizer.json` and `tokenizer_config.json` (created).

    Returns:
        `directory`.

    Raises:
        ValueError: not a GGUF file, or an architecture or tokenizer other
            than `llama` with a byte-level BPE.
    """
    gguf, reader = _reader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    arch = fields.get("general.architecture")
    if arch != "llama":
        raise ExpansionError(
            f"'{path}': GGUF architecture {arch!r}; keras_lemon reads 'llama' GGUF files "
            "(Llama, SmolLM2, TinyLlama). Convert other models to a Hugging Face "
            "directory first.")
    if fields.get("tokenizer.ggml.model") != "gpt2":
        raise ExpansionError(
            f"'{path}': tokenizer {fields.get('tokenizer.ggml.model')!r}; keras_lemon "
            "reads GGUF files with a byte-level BPE ('gpt2') tokenizer.")
    heads = int(fields["llama.attention.head_count"])
    kv_heads = int(fields.get("llama.attention.head_count_kv", heads))
    tensors = {}
    for tensor in reader.tensors:
        value = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type),
                           np.float32)
        name = tensor.name
        if name == "token_embd.weight":
            tensors["model.embed_tokens.weight"] = value
        elif name == "output_norm.weight":
            tensors["model.norm.weight"] = value
        elif name == "output.weight":
            tensors["lm_head.weight"] = value
        elif name.startswith("blk."):
            _, index, kind, _ = name.split(".")
            if kind == "attn_q":
                value = _unpermute(value, heads)
            elif kind == "attn_k":
                value = _unpermute(value, kv_heads)
            tensors[f"model.layers.{index}.{_LLAMA_BLOCK[kind]}.weight"] = value
    os.makedirs(directory, exist_ok=True)
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              os.path.join(directory, "model.safetensors"))
    tokens = [str(t) for t in fields["tokenizer.ggml.tokens"]]
    types = list(fields.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    bos = int(fields.get("tokenizer.ggml.bos_token_id", 1))
    eos = int(fields.get("tokenizer.ggml.eos_token_id", 2))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": len(tokens),
        "num_hidden_layers": int(fields["llama.block_count"]),
        "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "hidden_size": int(fields["llama.embedding_length"]),
        "intermediate_size": int(fields["llama.feed_forward_length"]),
        "rms_norm_eps": float(fields["llama.attention.layer_norm_rms_epsilon"]),
        "rope_theta": float(fields.get("llama.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(fields.get("llama.context_length", 2048)),
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "bos_token_id": bos, "eos_token_id": eos,
    }
    tokenizer = {
        "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [str(m) for m in fields["tokenizer.ggml.merges"]]},
        "added_tokens": [{"id": i, "content": t, "special": True}
                         for i, (t, kind) in enumerate(zip(tokens, types))
                         if kind == _CONTROL_TOKEN],
    }
    for name, content in (("config.json", config), ("tokenizer.json", tokenizer),
                          ("tokenizer_config.json",
                           {"bos_token": tokens[bos], "eos_token": tokens[eos]})):
        with open(os.path.join(directory, name), "w") as f:
            json.dump(content, f)
    return directory
