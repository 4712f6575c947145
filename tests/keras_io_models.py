"""keras.io examples as published, shrunk to test size.

`text_classification_transformer`: "Text classification with Transformer"
(keras.io/examples/nlp/text_classification_with_transformer), whose custom
`TransformerBlock` builds `MultiHeadAttention(key_dim=embed_dim)` (the head
size grows with the width) and whose `TokenAndPositionEmbedding` calls a
position `Embedding` on `ops.arange` inside the graph. The layers are the
example's own code (no `get_config`: Keras records their constructor
arguments), post-LN.
"""

import keras
import numpy as np
from keras import layers
from keras import ops


class TransformerBlock(layers.Layer):
    def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1):
        super().__init__()
        self.att = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        self.ffn = keras.Sequential(
            [layers.Dense(ff_dim, activation="relu"), layers.Dense(embed_dim)]
        )
        self.layernorm1 = layers.LayerNormalization(epsilon=1e-6)
        self.layernorm2 = layers.LayerNormalization(epsilon=1e-6)
        self.dropout1 = layers.Dropout(rate)
        self.dropout2 = layers.Dropout(rate)

    def call(self, inputs):
        attn_output = self.att(inputs, inputs)
        attn_output = self.dropout1(attn_output)
        out1 = self.layernorm1(inputs + attn_output)
        ffn_output = self.ffn(out1)
        ffn_output = self.dropout2(ffn_output)
        return self.layernorm2(out1 + ffn_output)


class TokenAndPositionEmbedding(layers.Layer):
    def __init__(self, maxlen, vocab_size, embed_dim):
        super().__init__()
        self.token_emb = layers.Embedding(input_dim=vocab_size, output_dim=embed_dim)
        self.pos_emb = layers.Embedding(input_dim=maxlen, output_dim=embed_dim)

    def call(self, x):
        maxlen = ops.shape(x)[-1]
        positions = ops.arange(start=0, stop=maxlen, step=1)
        positions = self.pos_emb(positions)
        x = self.token_emb(x)
        return x + positions


def text_classification_transformer(vocab_size=50, maxlen=10, embed_dim=8, num_heads=2,
                                    ff_dim=16, blocks=1):
    inputs = layers.Input(shape=(maxlen,))
    x = TokenAndPositionEmbedding(maxlen, vocab_size, embed_dim)(inputs)
    for _ in range(blocks):
        x = TransformerBlock(embed_dim, num_heads, ff_dim)(x)
    x = layers.GlobalAveragePooling1D()(x)
    x = layers.Dropout(0.1)(x)
    x = layers.Dense(20, activation="relu")(x)
    x = layers.Dropout(0.1)(x)
    outputs = layers.Dense(2, activation="softmax")(x)
    return keras.Model(inputs=inputs, outputs=outputs)


def get_pos_encoding_matrix(max_len, d_emb):
    """The example's sinusoidal table (its own code)."""
    pos_enc = np.array([
        [pos / np.power(10000, 2 * (j // 2) / d_emb) for j in range(d_emb)]
        if pos != 0 else np.zeros(d_emb)
        for pos in range(max_len)
    ])
    pos_enc[1:, 0::2] = np.sin(pos_enc[1:, 0::2])
    pos_enc[1:, 1::2] = np.cos(pos_enc[1:, 1::2])
    return pos_enc


def _bert_module(query, key, value, i, embed_dim, num_heads, ff_dim):
    attention_output = layers.MultiHeadAttention(
        num_heads=num_heads, key_dim=embed_dim // num_heads,
        name=f"encoder_{i}_multiheadattention")(query, key, value)
    attention_output = layers.Dropout(0.1, name=f"encoder_{i}_att_dropout")(attention_output)
    attention_output = layers.LayerNormalization(
        epsilon=1e-6, name=f"encoder_{i}_att_layernormalization")(query + attention_output)
    ffn = keras.Sequential([layers.Dense(ff_dim, activation="relu"), layers.Dense(embed_dim)],
                           name=f"encoder_{i}_ffn")
    ffn_output = ffn(attention_output)
    ffn_output = layers.Dropout(0.1, name=f"encoder_{i}_ffn_dropout")(ffn_output)
    return layers.LayerNormalization(
        epsilon=1e-6, name=f"encoder_{i}_ffn_layernormalization")(attention_output + ffn_output)


def masked_language_bert(vocab_size=50, max_len=10, embed_dim=16, num_heads=2, ff_dim=32,
                         num_layers=1):
    """keras.io "End-to-end Masked Language Modeling with BERT", as published.

    Its position embedding is computed outside the graph:
    `layers.Embedding(...)(ops.arange(...))` runs eagerly while the model is
    built, so the table enters the functional graph as a constant tensor
    added to the stream (the Embedding layer is not part of the model).
    """
    inputs = layers.Input((max_len,), dtype="int64")
    word_embeddings = layers.Embedding(vocab_size, embed_dim, name="word_embedding")(inputs)
    position_embeddings = layers.Embedding(
        input_dim=max_len, output_dim=embed_dim,
        weights=[get_pos_encoding_matrix(max_len, embed_dim)], name="position_embedding",
    )(ops.arange(start=0, stop=max_len, step=1))
    embeddings = word_embeddings + position_embeddings
    encoder_output = embeddings
    for i in range(num_layers):
        encoder_output = _bert_module(encoder_output, encoder_output, encoder_output, i,
                                      embed_dim, num_heads, ff_dim)
    mlm_output = layers.Dense(vocab_size, name="mlm_cls", activation="softmax")(encoder_output)
    return keras.Model(inputs, mlm_output, name="masked_bert_model")
