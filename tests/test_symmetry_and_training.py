"""LEMON breaks symmetry (Net2Net does not), and expanded models train."""

import keras
import keras_hub
import numpy as np
import pytest
from conftest import bert_backbone
from conftest import bert_inputs
from conftest import randomize
from conftest import vit_backbone
from conftest import vit_inputs

import keras_lemon
from keras_lemon import DimExpansion


def _ffn_dense(model):
    block = model.backbone.transformer_layers[0]
    return block._feedforward_intermediate_dense, block._feedforward_output_dense


def _copy_activations(model, source_hidden, source_ffn):
    """FFN intermediate activations of units j and their copies j + F.

    The block's FFN reads the (circular) stream; we feed it a random
    expanded input x' = M x, as the model does.
    """
    first, _ = _ffn_dense(model)
    x = np.random.default_rng(5).normal(size=(8, source_hidden)).astype("float32")
    stream = DimExpansion(source_hidden, first.kernel.shape[0], "circular")
    act = keras.ops.convert_to_numpy(first(stream.expand(x)))
    return act[:, :source_ffn], act[:, source_ffn : 2 * source_ffn]


def _classifier(method):
    source = keras_hub.models.BertTextClassifier(
        bert_backbone(dropout=0.0), num_classes=3, dropout=0.0
    )
    randomize(source, 1)
    big = keras_lemon.expand_model(source, hidden=32, method=method, seed=0)
    return source, big


@pytest.mark.parametrize("method", ["lemon", "net2net"])
def test_symmetry_breaking_after_one_step(method):
    source, big = _classifier(method)
    _, second = _ffn_dense(big)
    rows = keras.ops.convert_to_numpy(second.kernel)
    copies_equal = np.allclose(rows[:32], rows[32:64], atol=1e-6)
    assert copies_equal == (method == "net2net")

    a, b = _copy_activations(big, 16, 32)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # lossless start

    big.compile(optimizer=keras.optimizers.SGD(0.5),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = bert_inputs(seed=3)
    y = np.array([0, 1, 2])
    big.fit(x, y, batch_size=3, epochs=1, verbose=0)

    a, b = _copy_activations(big, 16, 32)
    drift = np.abs(a - b).max() / np.abs(a).max()
    if method == "lemon":
        assert drift > 1e-3, drift
    else:
        assert drift < 1e-5, drift


def test_zero_blocks_is_lemon_width_with_zero_new_blocks():
    """`zero_blocks` (LLaMA-Pro's depth rule) differs from LEMON only in new blocks."""
    source = randomize(keras_hub.models.ViTImageClassifier(vit_backbone(), num_classes=3), 1)
    lemon, zero = (keras_lemon.expand_model(source, hidden=24, layers=4, method=m, seed=7)
                   for m in ("lemon", "zero_blocks"))
    for index, (a, b) in enumerate(zip(lemon.backbone.get_layer("vit_encoder").encoder_layers,
                                       zero.backbone.get_layer("vit_encoder").encoder_layers)):
        outputs = {id(v) for v in b.mlp.dense_2.weights + b.mha.output_dense.weights}
        for va, vb in zip(a.weights, b.weights):
            wa, wb = keras.ops.convert_to_numpy(va), keras.ops.convert_to_numpy(vb)
            if index % 2 == 1 and id(vb) in outputs:  # new block: output projections
                assert not np.any(wb), vb.path
                if va.path.endswith("kernel"):  # LEMON's cancelling kernels are not
                    assert np.any(wa), va.path
            else:
                np.testing.assert_array_equal(wa, wb, err_msg=vb.path)


@pytest.mark.parametrize("family", ["bert", "vit"])
def test_expanded_model_trains(family):
    if family == "bert":
        source = randomize(keras_hub.models.BertTextClassifier(bert_backbone(), num_classes=3), 1)
        x, y = bert_inputs(seed=4), np.array([0, 1, 2])
        kwargs = dict(hidden=32, layers=3)
    else:
        source = randomize(keras_hub.models.ViTImageClassifier(vit_backbone(), num_classes=3), 1)
        x, y = vit_inputs(seed=4), np.array([2, 0, 1])
        kwargs = dict(hidden=24, layers=3)
    big = keras_lemon.expand_model(source, seed=0, **kwargs)
    big.compile(optimizer=keras.optimizers.AdamW(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = big.evaluate(x, y, verbose=0)
    history = big.fit(x, y, batch_size=3, epochs=8, verbose=0)
    after = big.evaluate(x, y, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert after < before, (before, after)


def _vit_classifier():
    return randomize(keras_hub.models.ViTImageClassifier(vit_backbone(), num_classes=3), 1)


def test_noise_scale_scales_every_draw_and_stays_lossless():
    """`noise_scale` multiplies the distance of every weight from the equal split."""
    source = _vit_classifier()
    before = [keras.ops.convert_to_numpy(v).copy() for v in source.weights]
    models = {s: keras_lemon.expand_model(source, hidden=24, layers=4, seed=3, noise_scale=s)
              for s in (0.0, 0.25, 1.0)}
    equal = keras_lemon.expand_model(source, hidden=24, layers=4, method="net2net")
    x = vit_inputs(seed=2)
    reference = keras.ops.convert_to_numpy(source.predict_on_batch(x))
    for scale, model in models.items():
        out = keras.ops.convert_to_numpy(model.predict_on_batch(x))
        assert np.abs(out - reference).max() <= 1e-5 * np.abs(reference).max(), scale
    moved = 0
    for v0, v25, v1, vn in zip(*(m.weights for m in (*models.values(), equal))):
        w0, w25, w1, wn = (keras.ops.convert_to_numpy(v) for v in (v0, v25, v1, vn))
        # Scale 0 is the equal split with zero new blocks: Net2Net's weights.
        np.testing.assert_allclose(w0, wn, rtol=1e-6, atol=1e-7, err_msg=v0.path)
        np.testing.assert_allclose(w25 - w0, 0.25 * (w1 - w0), rtol=1e-4, atol=1e-6,
                                   err_msg=v0.path)
        moved += bool(np.any(np.abs(w1 - w0) > 1e-4))
    assert moved > 10  # fan-in splits, cancelling blocks, LayerNorm extras
    for v, value in zip(source.weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), value)


@pytest.mark.parametrize("bad, method, message", [
    (-0.1, "lemon", "finite number >= 0"),
    (float("nan"), "lemon", "finite number >= 0"),
    ("large", "zero_blocks", "finite number >= 0"),
    (0.5, "net2net", "no effect with method='net2net'"),
])
def test_bad_noise_scale_is_refused(bad, method, message):
    with pytest.raises(ValueError, match=message):
        keras_lemon.expand_model(_vit_classifier(), hidden=24, method=method, noise_scale=bad)
