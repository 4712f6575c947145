"""Transformers written the way Keras users write them (keras.io style).

- `functional_vit`: pre-LN ViT as a functional model, with a custom
  patch-extraction layer and a custom patch encoder (Dense projection plus a
  position Embedding called on `ops.arange`), MultiHeadAttention, an MLP and
  a flattened head (as in keras.io "Image classification with Vision
  Transformer").
- `functional_bert_mlm`: post-LN BERT for masked LM as a `keras.Model`
  subclass built from inputs and outputs, with `x + y` residuals, a nested
  `keras.Sequential` FFN and an untied output Dense (as in keras.io
  "End-to-end Masked Language Modeling with BERT").
- `EncoderClassifier`: a subclassed pre-LN encoder classifier whose blocks sit
  in a Python list, with its own position weight and its sizes in
  `get_config`.
"""

import keras
import numpy as np
from keras import layers
from keras import ops

PACKAGE = "keras_lemon_tests"


@keras.saving.register_keras_serializable(PACKAGE)
class Patches(layers.Layer):
    """Splits images into flattened patches (no weights)."""

    def __init__(self, patch_size, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size

    def call(self, images):
        patches = ops.image.extract_patches(images, size=self.patch_size)
        rows, cols, features = patches.shape[1], patches.shape[2], patches.shape[3]
        return ops.reshape(patches, (-1, rows * cols, features))

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size}


@keras.saving.register_keras_serializable(PACKAGE)
class PatchEncoder(layers.Layer):
    """Projects patches and adds a learned position embedding."""

    def __init__(self, num_patches, projection_dim, **kwargs):
        super().__init__(**kwargs)
        self.num_patches = num_patches
        self.projection_dim = projection_dim
        self.projection = layers.Dense(units=projection_dim)
        self.position_embedding = layers.Embedding(input_dim=num_patches, output_dim=projection_dim)

    def build(self, input_shape):
        self.projection.build(input_shape)
        self.position_embedding.build((1, self.num_patches))

    def call(self, patch):
        positions = ops.expand_dims(ops.arange(start=0, stop=self.num_patches, step=1), axis=0)
        return self.projection(patch) + self.position_embedding(positions)

    def get_config(self):
        return {**super().get_config(), "num_patches": self.num_patches,
                "projection_dim": self.projection_dim}


def functional_vit(image_size=8, patch_size=4, hidden=16, heads=2, num_layers=2,
                   mlp_dim=32, key_dim=None, head_units=16, num_classes=5):
    """keras.io-style ViT; `head_units == hidden` on purpose (must not grow)."""
    inputs = keras.Input(shape=(image_size, image_size, 3))
    patches = Patches(patch_size)(inputs)
    num_patches = (image_size // patch_size) ** 2
    x = PatchEncoder(num_patches, hidden)(patches)
    for _ in range(num_layers):
        x1 = layers.LayerNormalization(epsilon=1e-6)(x)
        attention = layers.MultiHeadAttention(
            num_heads=heads, key_dim=key_dim or hidden // heads, dropout=0.1)(x1, x1)
        x2 = layers.Add()([attention, x])
        x3 = layers.LayerNormalization(epsilon=1e-6)(x2)
        x3 = layers.Dense(mlp_dim, activation="gelu")(x3)
        x3 = layers.Dropout(0.1)(x3)
        x3 = layers.Dense(hidden)(x3)
        x3 = layers.Dropout(0.1)(x3)
        x = layers.Add()([x3, x2])
    representation = layers.LayerNormalization(epsilon=1e-6)(x)
    representation = layers.Flatten()(representation)
    representation = layers.Dropout(0.5)(representation)
    features = layers.Dense(head_units, activation="gelu")(representation)
    logits = layers.Dense(num_classes)(features)
    return keras.Model(inputs=inputs, outputs=logits, name="vit_classifier")


@keras.saving.register_keras_serializable(PACKAGE)
class TokenAndPositionEmbedding(layers.Layer):
    """Token embedding plus a learned position embedding."""

    def __init__(self, vocab_size, max_len, embed_dim, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.max_len, self.embed_dim = vocab_size, max_len, embed_dim
        self.token_emb = layers.Embedding(vocab_size, embed_dim)
        self.pos_emb = layers.Embedding(max_len, embed_dim)

    def build(self, input_shape):
        self.token_emb.build(input_shape)
        self.pos_emb.build((self.max_len,))

    def call(self, x):
        positions = ops.arange(0, self.max_len)
        return self.token_emb(x) + self.pos_emb(positions)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size,
                "max_len": self.max_len, "embed_dim": self.embed_dim}


@keras.saving.register_keras_serializable(PACKAGE)
class MaskedLanguageModel(keras.Model):
    """A functional model subclass (keras.io's BERT MLM overrides train_step)."""

    def masked_accuracy(self, tokens, targets):
        predictions = ops.argmax(self(tokens, training=False), axis=-1)
        return float(ops.mean(ops.cast(predictions == targets, "float32")))


def functional_bert_mlm(vocab=40, seq=10, hidden=16, heads=2, num_layers=2, ff_dim=32,
                        epsilon=1e-6):
    inputs = keras.Input((seq,), dtype="int32")
    x = TokenAndPositionEmbedding(vocab, seq, hidden)(inputs)
    for i in range(num_layers):
        attention = layers.MultiHeadAttention(
            num_heads=heads, key_dim=hidden // heads, name=f"encoder_{i}_multiheadattention",
        )(x, x, x)
        attention = layers.Dropout(0.1)(attention)
        x = layers.LayerNormalization(epsilon=epsilon, name=f"encoder_{i}_att_layernormalization")(
            x + attention)
        ffn = keras.Sequential(
            [layers.Dense(ff_dim, activation="relu"), layers.Dense(hidden)],
            name=f"encoder_{i}_ffn",
        )
        ffn_output = layers.Dropout(0.1)(ffn(x))
        x = layers.LayerNormalization(epsilon=epsilon, name=f"encoder_{i}_ffn_layernormalization")(
            x + ffn_output)
    outputs = layers.Dense(vocab, name="mlm_cls", activation="softmax")(x)
    return MaskedLanguageModel(inputs, outputs, name="masked_bert_model")


@keras.saving.register_keras_serializable(PACKAGE)
class EncoderBlock(layers.Layer):
    """Pre-LN transformer block."""

    def __init__(self, hidden_dim, num_heads, mlp_dim, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim, self.num_heads, self.mlp_dim, self.dropout = (
            hidden_dim, num_heads, mlp_dim, dropout)
        self.norm1 = layers.LayerNormalization(epsilon=1e-5)
        self.attn = layers.MultiHeadAttention(num_heads, key_dim=hidden_dim // num_heads)
        self.norm2 = layers.LayerNormalization(epsilon=1e-5)
        self.fc1 = layers.Dense(mlp_dim, activation="gelu")
        self.fc2 = layers.Dense(hidden_dim)
        self.drop = layers.Dropout(dropout)

    def build(self, input_shape):
        for norm in (self.norm1, self.norm2):
            norm.build(input_shape)
        self.attn.build(input_shape, input_shape)
        self.fc1.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.mlp_dim,))

    def call(self, x, training=False):
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, training=training), training=training)
        h = self.norm2(x)
        return x + self.drop(self.fc2(self.fc1(h)), training=training)

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads, "mlp_dim": self.mlp_dim, "dropout": self.dropout}


@keras.saving.register_keras_serializable(PACKAGE)
class EncoderClassifier(keras.Model):
    """Subclassed pre-LN encoder classifier; blocks in a list, own position weight."""

    def __init__(self, vocab_size=40, seq_len=10, hidden_dim=16, num_layers=2,
                 num_heads=2, mlp_dim=32, num_classes=16, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.seq_len, self.hidden_dim = vocab_size, seq_len, hidden_dim
        self.num_layers, self.num_heads, self.mlp_dim = num_layers, num_heads, mlp_dim
        self.num_classes = num_classes
        self.embed = layers.Embedding(vocab_size, hidden_dim)
        self.blocks = [EncoderBlock(hidden_dim, num_heads, mlp_dim) for _ in range(num_layers)]
        self.norm = layers.LayerNormalization(epsilon=1e-5)
        self.head = layers.Dense(num_classes)

    def build(self, input_shape):
        self.position = self.add_weight(
            shape=(self.seq_len, self.hidden_dim), initializer="random_normal", name="position")
        self.embed.build(input_shape)
        features = tuple(input_shape) + (self.hidden_dim,)
        for block in self.blocks:
            block.build(features)
        self.norm.build(features)
        self.head.build((input_shape[0], self.hidden_dim))

    def call(self, tokens, training=False):
        x = self.embed(tokens) + self.position
        for block in self.blocks:
            x = block(x, training=training)
        return self.head(ops.mean(self.norm(x), axis=1))

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "seq_len": self.seq_len,
                "hidden_dim": self.hidden_dim, "num_layers": self.num_layers,
                "num_heads": self.num_heads, "mlp_dim": self.mlp_dim,
                "num_classes": self.num_classes}


def encoder_classifier(**kwargs):
    model = EncoderClassifier(**kwargs)
    model(np.zeros((2, model.seq_len), "int32"))
    return model


def residual_mlp(hidden=16, features=4, outputs=2, normed_layer=None, pooled_head=False):
    """A small pre-LN residual MLP (no attention): 6 tokens, 2 blocks.

    Each block adds `Dense(hidden)(Dense(2 * hidden, relu)(LN(x)))` to the
    stream; `normed_layer` (a layer factory) is applied after the LayerNorm.
    With `pooled_head`, the head is LN -> mean over tokens -> Dense.
    """
    inputs = keras.Input((6, features))
    x = layers.Dense(hidden)(inputs)
    for _ in range(2):
        h = layers.LayerNormalization()(x)
        if normed_layer is not None:
            h = normed_layer()(h)
        x = x + layers.Dense(hidden)(layers.Dense(2 * hidden, activation="relu")(h))
    if pooled_head:
        x = layers.GlobalAveragePooling1D()(layers.LayerNormalization()(x))
    return keras.Model(inputs, layers.Dense(outputs)(x))


def image_inputs(batch=3, size=8, seed=1):
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype("float32")


def token_inputs(batch=3, seq=10, vocab=40, seed=1):
    return np.random.default_rng(seed).integers(0, vocab, (batch, seq)).astype("int32")
