"""A float64 NumPy forward pass of keras-hub's Llama (Llama3) causal LM.

The exact logits of a model's weights, to compare a float32 expansion
against: the float32 source itself is only as close as its round-off. Same
math as keras-hub: RMSNorm `x / sqrt(mean(x^2) + eps) * scale`, rotary
embeddings on the two halves of each head (`[-x2, x1]`), grouped-query
attention (query head i reads KV head i // groups), causal and padding
masks, SwiGLU feed-forward, logits against the (tied) token table.
"""

import keras
import numpy as np


def _f64(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable), np.float64)


def _rms_norm(x, scale, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def _rotary(x, theta):
    """x: (batch, length, heads, d)."""
    d = x.shape[-1]
    inverse = theta ** -(np.arange(0, d, 2, dtype=np.float64) / d)
    angles = np.arange(x.shape[1], dtype=np.float64)[:, None] * inverse[None, :]
    angles = np.concatenate([angles, angles], axis=-1)[None, :, None, :]
    half = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], axis=-1)
    return x * np.cos(angles) + half * np.sin(angles)


def llama_logits(backbone, token_ids, padding_mask):
    """Logits `(batch, length, vocab)` of a keras-hub `LlamaBackbone` in float64."""
    eps, theta = backbone.layer_norm_epsilon, backbone.rope_max_wavelength
    embedding = backbone.token_embedding
    x = _f64(embedding.embeddings)[token_ids]
    length = token_ids.shape[1]
    allowed = np.tril(np.ones((length, length), bool))[None] & padding_mask.astype(bool)[:, None, :]
    for i in range(backbone.num_layers):
        layer = backbone.get_layer(f"transformer_layer_{i}")
        attention = layer._self_attention_layer
        h = _rms_norm(x, _f64(layer._self_attention_layernorm.scale), eps)
        q = np.einsum("blm,muh->bluh", h, _f64(attention._query_dense.kernel))
        k = np.einsum("blm,mvh->blvh", h, _f64(attention._key_dense.kernel))
        v = np.einsum("blm,mvh->blvh", h, _f64(attention._value_dense.kernel))
        q, k = _rotary(q, theta), _rotary(k, theta)
        groups = q.shape[2] // k.shape[2]
        k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
        scores = np.einsum("bquh,bkuh->buqk", q, k) / np.sqrt(q.shape[-1])
        scores = np.where(allowed[:, None], scores, -np.inf)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        heads = np.einsum("buqk,bkuh->bquh", scores, v)
        x = x + np.einsum("bquh,uhm->bqm", heads, _f64(attention._output_dense.kernel))
        h = _rms_norm(x, _f64(layer._feedforward_layernorm.scale), eps)
        gate = h @ _f64(layer._feedforward_gate_dense.kernel)
        up = h @ _f64(layer._feedforward_intermediate_dense.kernel)
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ _f64(layer._feedforward_output_dense.kernel)
    x = _rms_norm(x, _f64(backbone.get_layer("sequence_output_layernorm").scale), eps)
    table = _f64(embedding.embeddings) if embedding.tie_weights \
        else _f64(embedding.reverse_embeddings).T
    return x @ table.T
