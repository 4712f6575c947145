"""Small presets on disk, made in the test (no downloads): Keras presets saved
with `save_to_preset`, and a Hugging Face-format BERT directory that
keras-hub's converter reads. Every weight is random (LayerNorms included).
"""

import json
import os

import keras_hub
import numpy as np
from safetensors.numpy import save_file
from conftest import SEQ
from conftest import VOCAB
from conftest import bert_backbone
from conftest import randomize
from conftest import vit_backbone

# A WordPiece vocabulary of VOCAB entries: the special tokens, then English words.
WORDS = ("the a of and to in is that it for was on are as with his they be at one have "
         "this from or had by word but what some we can out other were all there when up "
         "use your how said an each she which do their time if").split()
VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS[: VOCAB - 5]
assert len(VOCABULARY) == VOCAB


def bert_tokenizer():
    return keras_hub.models.BertTokenizer(vocabulary=VOCABULARY)


def bert_masked_lm_preset(directory):
    """A BertMaskedLM with its preprocessor and tokenizer; returns the task."""
    preprocessor = keras_hub.models.BertMaskedLMPreprocessor(bert_tokenizer(), sequence_length=SEQ)
    task = randomize(keras_hub.models.BertMaskedLM(bert_backbone(), preprocessor=preprocessor), 1)
    task.save_to_preset(directory)
    return task


def bert_backbone_preset(directory):
    """A BertBackbone with a tokenizer saved beside it (no task, no preprocessor)."""
    backbone = bert_backbone()
    backbone.save_to_preset(directory)
    bert_tokenizer().save_to_preset(directory)
    return backbone


def vit_classifier_preset(directory):
    """A ViTImageClassifier with its preprocessor (image converter)."""
    converter = keras_hub.layers.ViTImageConverter(image_size=(8, 8), scale=1 / 255.0)
    preprocessor = keras_hub.models.ViTImageClassifierPreprocessor(image_converter=converter)
    task = randomize(keras_hub.models.ViTImageClassifier(
        vit_backbone(), num_classes=5, preprocessor=preprocessor), 1)
    task.save_to_preset(directory)
    return task


def _hf_weight_makers(rng, hidden):
    """`normal`, `layer_norm` and `linear` tensors in Hugging Face layout (random,
    gammas around 1 with spread 0.5; `nn.Linear` weights are (out, in))."""

    def normal(*shape):
        return rng.normal(0.0, 0.2, shape).astype("float32")

    def layer_norm(prefix):
        return {f"{prefix}.weight": (1.0 + rng.normal(0.0, 0.5, hidden)).astype("float32"),
                f"{prefix}.bias": rng.normal(0.0, 0.5, hidden).astype("float32")}

    def linear(prefix, n_in, n_out):
        return {f"{prefix}.weight": normal(n_out, n_in), f"{prefix}.bias": normal(n_out)}

    return normal, layer_norm, linear


def _write_hf_directory(directory, tensors, config, tokenizer_class):
    """`model.safetensors`, `config.json` and a lower-casing WordPiece tokenizer."""
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": tokenizer_class, "do_lower_case": True}, f)
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
        f.write("\n".join(VOCABULARY) + "\n")
    return directory


def hf_bert_directory(directory, seed=0, layers=2, hidden=16, heads=2, intermediate=32):
    """Writes a BERT in Hugging Face layout: config.json, model.safetensors, vocab.txt.

    HF `nn.Linear` weights are (out, in). LayerNorms use the sentence-
    transformers names (`weight`/`bias`), as all-MiniLM-L6-v2 does.
    """
    os.makedirs(directory, exist_ok=True)
    normal, layer_norm, linear = _hf_weight_makers(np.random.default_rng(seed), hidden)

    tensors = {
        "embeddings.word_embeddings.weight": normal(VOCAB, hidden),
        "embeddings.position_embeddings.weight": normal(SEQ, hidden),
        "embeddings.token_type_embeddings.weight": normal(2, hidden),
        **layer_norm("embeddings.LayerNorm"),
        **linear("pooler.dense", hidden, hidden),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}"
        for name in ("query", "key", "value"):
            tensors.update(linear(f"{p}.attention.self.{name}", hidden, hidden))
        tensors.update(linear(f"{p}.attention.output.dense", hidden, hidden))
        tensors.update(layer_norm(f"{p}.attention.output.LayerNorm"))
        tensors.update(linear(f"{p}.intermediate.dense", hidden, intermediate))
        tensors.update(linear(f"{p}.output.dense", intermediate, hidden))
        tensors.update(layer_norm(f"{p}.output.LayerNorm"))
    config = {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": VOCAB,
        "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "intermediate_size": intermediate, "max_position_embeddings": SEQ,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
    }
    return _write_hf_directory(directory, tensors, config, "BertTokenizer")


def hf_distilbert_directory(directory, seed=0, layers=2, hidden=16, heads=2, intermediate=32):
    """Writes a DistilBERT in Hugging Face layout (`DistilBertForMaskedLM` key names)."""
    os.makedirs(directory, exist_ok=True)
    normal, layer_norm, linear = _hf_weight_makers(np.random.default_rng(seed), hidden)

    tensors = {
        "distilbert.embeddings.word_embeddings.weight": normal(VOCAB, hidden),
        "distilbert.embeddings.position_embeddings.weight": normal(SEQ, hidden),
        **layer_norm("distilbert.embeddings.LayerNorm"),
    }
    for i in range(layers):
        p = f"distilbert.transformer.layer.{i}"
        for name in ("q_lin", "k_lin", "v_lin", "out_lin"):
            tensors.update(linear(f"{p}.attention.{name}", hidden, hidden))
        tensors.update(layer_norm(f"{p}.sa_layer_norm"))
        tensors.update(linear(f"{p}.ffn.lin1", hidden, intermediate))
        tensors.update(linear(f"{p}.ffn.lin2", intermediate, hidden))
        tensors.update(layer_norm(f"{p}.output_layer_norm"))
    config = {
        "architectures": ["DistilBertForMaskedLM"], "model_type": "distilbert",
        "vocab_size": VOCAB, "dim": hidden, "n_layers": layers, "n_heads": heads,
        "hidden_dim": intermediate, "max_position_embeddings": SEQ, "dropout": 0.1,
        "activation": "gelu",
    }
    return _write_hf_directory(directory, tensors, config, "DistilBertTokenizer")


def hf_deit_directory(directory, seed=0, layers=2, hidden=16, heads=2, intermediate=32,
                      image_size=8, patch_size=4):
    """Writes a DeiT in Hugging Face layout (`DeiTModel` key names, `deit.` prefix).

    A convolution's weight is (out, in, kh, kw); the class, distillation and
    position tables are (1, tokens, hidden).
    """
    os.makedirs(directory, exist_ok=True)
    normal, layer_norm, linear = _hf_weight_makers(np.random.default_rng(seed), hidden)
    patches = (image_size // patch_size) ** 2
    tensors = {
        "deit.embeddings.patch_embeddings.projection.weight": normal(hidden, 3, patch_size,
                                                                    patch_size),
        "deit.embeddings.patch_embeddings.projection.bias": normal(hidden),
        "deit.embeddings.cls_token": normal(1, 1, hidden),
        "deit.embeddings.distillation_token": normal(1, 1, hidden),
        "deit.embeddings.position_embeddings": normal(1, patches + 2, hidden),
        **layer_norm("deit.layernorm"),
    }
    for i in range(layers):
        p = f"deit.encoder.layer.{i}"
        for name in ("query", "key", "value"):
            tensors.update(linear(f"{p}.attention.attention.{name}", hidden, hidden))
        tensors.update(linear(f"{p}.attention.output.dense", hidden, hidden))
        tensors.update(layer_norm(f"{p}.layernorm_before"))
        tensors.update(layer_norm(f"{p}.layernorm_after"))
        tensors.update(linear(f"{p}.intermediate.dense", hidden, intermediate))
        tensors.update(linear(f"{p}.output.dense", intermediate, hidden))
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    config = {
        "architectures": ["DeiTModel"], "model_type": "deit", "image_size": image_size,
        "patch_size": patch_size, "num_hidden_layers": layers, "num_attention_heads": heads,
        "hidden_size": hidden, "intermediate_size": intermediate, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "layer_norm_eps": 1e-12, "num_channels": 3,
    }
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    return directory


def tree_digest(directory):
    """{relative path: bytes} of every file under `directory` (to show it is unchanged)."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = f.read()
    return files
