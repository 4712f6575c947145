"""keras-hub's BertBackbone forward pass in float64 NumPy: a backend-independent
reference for "the outputs are unchanged" on real weights.

A float32 model is only as exact as float32: all-MiniLM-L6-v2 itself, run in
float32, is about 1e-5 (relative) away from its float64 outputs on real
sentences. Comparing an expanded float32 model with a float32 source mixes the
two models' round-off; comparing each with this float64 reference separates
them. (On JAX, Keras' float64 is float32 unless x64 is enabled, so the
reference is NumPy.)
"""

import keras
import numpy as np


def _np(variable):
    return keras.ops.convert_to_numpy(variable).astype("float64")


def _layer_norm(x, layer):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + layer.epsilon) * _np(layer.gamma) + _np(layer.beta)


def _gelu_approximate(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _dense(x, layer):
    return x @ _np(layer.kernel) + _np(layer.bias)


def _attention(x, attention, key_mask):
    q = np.einsum("bsh,hnd->bsnd", x, _np(attention.query_dense.kernel)) + _np(attention.query_dense.bias)
    k = np.einsum("bsh,hnd->bsnd", x, _np(attention.key_dense.kernel)) + _np(attention.key_dense.bias)
    v = np.einsum("bsh,hnd->bsnd", x, _np(attention.value_dense.kernel)) + _np(attention.value_dense.bias)
    scores = np.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(key_mask[:, None, None, :], scores, -np.inf)
    scores -= scores.max(-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(-1, keepdims=True)
    heads = np.einsum("bnqk,bknd->bqnd", probs, v)
    return np.einsum("bqnd,ndh->bqh", heads, _np(attention.output_dense.kernel)) + _np(
        attention.output_dense.bias)


def bert_forward(backbone, inputs):
    """`{"sequence_output", "pooled_output"}` of a BertBackbone, in float64 (inference)."""
    token_ids, segment_ids = inputs["token_ids"], inputs["segment_ids"]
    key_mask = np.asarray(inputs["padding_mask"]).astype(bool)
    length = token_ids.shape[1]
    x = (_np(backbone.token_embedding.embeddings)[token_ids]
         + _np(backbone.position_embedding.position_embeddings)[:length][None]
         + _np(backbone.segment_embedding.embeddings)[segment_ids])
    x = _layer_norm(x, backbone.embeddings_layer_norm)
    for block in backbone.transformer_layers:  # post-LN TransformerEncoder
        x = _layer_norm(x + _attention(x, block._self_attention_layer, key_mask),
                        block._self_attention_layer_norm)
        h = _gelu_approximate(_dense(x, block._feedforward_intermediate_dense))
        x = _layer_norm(x + _dense(h, block._feedforward_output_dense), block._feedforward_layer_norm)
    pooled = np.tanh(_dense(x[:, 0], backbone.pooled_dense))
    return {"sequence_output": x, "pooled_output": pooled}
