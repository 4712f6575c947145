"""expand_model on users' own Keras models: functional graphs and subclassed models.

Every source model has all weights randomized (LayerNorm gammas and betas
included); outputs are compared in inference mode on real random inputs.
"""

import os

import keras
import numpy as np
import pytest
from conftest import TOLERANCE
from conftest import randomize
from conftest import relative_error
from conftest import weights_hash
from keras import layers
from keras import ops
from user_models import encoder_classifier
from user_models import functional_bert_mlm
from user_models import functional_vit
from user_models import image_inputs
from user_models import residual_mlp
from user_models import token_inputs

import keras_lemon

MODELS = {
    "functional_vit": (functional_vit, image_inputs),
    "functional_bert_mlm": (functional_bert_mlm, token_inputs),
    "subclassed_encoder": (encoder_classifier, token_inputs),
}

# Width (x2 and, for pre-LN graphs, a non-multiple), depth (interleave and
# stack, more than 2x) and both.
CASES = {
    "width": dict(hidden=32),
    "depth": dict(layers=4),
    "depth_stack": dict(layers=5, placement="stack"),
    "width_depth": dict(hidden=32, layers=5),
}


def _outputs(model, inputs):
    return keras.ops.convert_to_numpy(model(inputs, training=False))


@pytest.fixture(params=list(MODELS))
def user_model(request):
    build, inputs = MODELS[request.param]
    return request.param, randomize(build()), inputs()


@pytest.mark.parametrize("case", list(CASES))
def test_lossless(user_model, case):
    name, model, inputs = user_model
    before = weights_hash(model)
    expected = _outputs(model, inputs)
    nodes = {id(x): len(x._inbound_nodes) for x in model._flatten_layers()}
    big = keras_lemon.expand_model(model, seed=0, **CASES[case])
    # Tracing calls the source's layers symbolically; their graph is restored.
    assert {id(x): len(x._inbound_nodes) for x in model._flatten_layers()} == nodes
    assert type(big) is type(model)
    assert relative_error(expected, _outputs(big, inputs)) <= TOLERANCE
    assert big.count_params() > model.count_params()
    assert weights_hash(model) == before  # the source is unchanged
    assert relative_error(expected, _outputs(model, inputs)) == 0.0


def test_pre_ln_non_multiple_width_and_heads():
    model = randomize(functional_vit())
    inputs = image_inputs()
    expected = _outputs(model, inputs)
    big = keras_lemon.expand_model(model, hidden=40, heads=5, layers=3, seed=1)
    assert relative_error(expected, _outputs(big, inputs)) <= TOLERANCE
    attention = [layer for layer in big.layers if isinstance(layer, layers.MultiHeadAttention)]
    assert len(attention) == 3
    assert {(a.num_heads, a.key_dim) for a in attention} == {(5, 8)}
    norms = [layer for layer in big.layers if isinstance(layer, layers.LayerNormalization)]
    # average stream 16 -> 40: eta^2 = 32/40 scales every epsilon.
    assert all(np.isclose(n.epsilon, 1e-6 * 32 / 40) for n in norms)


def test_untied_key_dim_keeps_head_size():
    """keras.io's ViT uses key_dim = hidden: heads and key_dim stay, only the stream grows."""
    model = randomize(functional_vit(key_dim=16))
    inputs = image_inputs()
    big = keras_lemon.expand_model(model, hidden=48, seed=2)
    assert relative_error(_outputs(model, inputs), _outputs(big, inputs)) <= TOLERANCE
    attention = [layer for layer in big.layers if isinstance(layer, layers.MultiHeadAttention)]
    assert {(a.num_heads, a.key_dim) for a in attention} == {(2, 16)}


def test_coincident_width_is_not_expanded():
    """The ViT head has as many units as the hidden size; it must keep them."""
    model = randomize(functional_vit(head_units=16))
    big = keras_lemon.expand_model(model, hidden=32, seed=0)
    dense = [layer for layer in big.layers if isinstance(layer, layers.Dense)]
    head, logits = dense[-2], dense[-1]
    assert head.units == 16 and logits.units == 5
    # The head reads the flattened (tokens x hidden) features: its input grew.
    assert head.kernel.shape == (4 * 32, 16)


def test_roles_inferred_from_the_graph():
    vit = keras_lemon.expansion_plan(randomize(functional_vit()), hidden=32)
    bert = keras_lemon.expansion_plan(randomize(functional_bert_mlm()), hidden=32)
    assert vit.dims["stream"].pattern == "average"  # pre-LN
    assert bert.dims["stream"].pattern == "circular"  # post-LN
    rows = {row.path: row for row in bert.rows}
    ffn_in = [r for p, r in rows.items() if r.source_shape == (16, 32)]
    assert ffn_in and all(r.target_shape == (32, 64) for r in ffn_in)
    assert rows["mlm_cls/kernel"].target_shape == (32, 40)  # vocabulary unchanged


def test_post_ln_requires_a_multiple():
    with pytest.raises(ValueError, match="multiple of 16"):
        keras_lemon.expand_model(randomize(functional_bert_mlm()), hidden=24)


def test_nested_sequential_and_subclass_are_kept():
    model = randomize(functional_bert_mlm())
    big = keras_lemon.expand_model(model, hidden=32, layers=3, seed=0)
    ffns = [layer for layer in big.layers if isinstance(layer, keras.Sequential)]
    assert len(ffns) == 3
    assert [d.units for d in ffns[0].layers] == [64, 32]
    assert hasattr(big, "masked_accuracy")


def test_subclassed_rebuilt_from_config():
    model = randomize(encoder_classifier())
    big = keras_lemon.expand_model(model, hidden=32, layers=3, seed=0)
    config = big.get_config()
    assert (config["hidden_dim"], config["num_layers"], config["num_heads"], config["mlp_dim"]) \
        == (32, 3, 4, 64)
    assert big.position.shape == (10, 32)
    assert config["num_classes"] == 16  # equals the source hidden size: unchanged


def test_config_keys_for_unusual_names():
    @keras.saving.register_keras_serializable("keras_lemon_tests")
    class Tiny(keras.Model):
        def __init__(self, size=8, blocks=2, **kwargs):
            super().__init__(**kwargs)
            self.size, self.blocks_count = size, blocks
            self.inp = layers.Dense(size)
            # Blocks as a list of lists of layers.
            self.ffn = [[layers.LayerNormalization(), layers.Dense(2 * size, activation="relu"),
                         layers.Dense(size)] for _ in range(blocks)]
            self.out = layers.Dense(3)

        def call(self, x):
            x = self.inp(x)
            for norm, up, down in self.ffn:
                x = x + down(up(norm(x)))
            return self.out(x)

        def get_config(self):
            return {**super().get_config(), "size": self.size, "blocks": self.blocks_count}

    model = Tiny()
    model(np.zeros((2, 5), "float32"))
    randomize(model)
    with pytest.raises(ValueError, match="config_keys"):
        keras_lemon.expand_model(model, hidden=16)
    big = keras_lemon.expand_model(model, hidden=16, layers=3, seed=0,
                                   config_keys={"hidden": "size", "layers": ("blocks",)})
    assert (big.size, len(big.ffn)) == (16, 3)
    x = np.random.default_rng(0).normal(size=(3, 5)).astype("float32")
    assert relative_error(_outputs(model, x), _outputs(big, x)) <= TOLERANCE
    with pytest.raises(ValueError, match="unknown role"):
        keras_lemon.expand_model(model, hidden=16, config_keys={"width": "size"})


def test_save_and_reload(user_model, tmp_path):
    _, model, inputs = user_model
    big = keras_lemon.expand_model(model, hidden=32, layers=3, seed=0)
    path = os.path.join(tmp_path, "expanded.keras")
    big.save(path)
    reloaded = keras.models.load_model(path)
    assert type(reloaded) is type(big)
    np.testing.assert_allclose(_outputs(reloaded, inputs), _outputs(big, inputs), rtol=0, atol=1e-6)
    assert relative_error(_outputs(model, inputs), _outputs(reloaded, inputs)) <= TOLERANCE


def test_expanded_model_trains():
    model = randomize(functional_vit())
    big = keras_lemon.expand_model(model, hidden=32, layers=3, seed=0)
    big.compile(optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = image_inputs(batch=8)
    y = np.arange(8) % 5
    before = big.evaluate(x, y, verbose=0)
    history = big.fit(x, y, epochs=8, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert big.evaluate(x, y, verbose=0) < before


@keras.saving.register_keras_serializable("keras_lemon_tests")
class FeatureMixer(layers.Layer):
    """Mixes features with its own matrix: no rule can know its role."""

    def build(self, shape):
        self.mix = self.add_weight(shape=(shape[-1], shape[-1]), name="mix")

    def call(self, x):
        return ops.matmul(x, self.mix)


def _model_with(layer_factory):
    return randomize(residual_mlp(features=8, outputs=3, normed_layer=layer_factory))


def test_unsupported_custom_layer_is_a_clear_error():
    model = _model_with(FeatureMixer)
    before = weights_hash(model)
    with pytest.raises(ValueError, match=r"(?s)Matmul.*register_rule"):
        keras_lemon.expand_model(model, hidden=32)
    assert weights_hash(model) == before


def test_unsupported_builtin_layer_is_a_clear_error():
    model = _model_with(lambda: layers.BatchNormalization())
    with pytest.raises(ValueError, match=r"BatchNormalization.*register_rule"):
        keras_lemon.expand_model(model, hidden=32)


def test_registered_pointwise_rule_for_a_custom_layer():
    @keras.saving.register_keras_serializable("keras_lemon_tests")
    class Scale(layers.Layer):
        def build(self, shape):
            self.scale = self.add_weight(shape=(shape[-1],), initializer="ones", name="scale")

        def call(self, x):
            return x * self.scale

    @keras_lemon.register_rule(Scale, kind="pointwise")
    def expand_scale(layer, ctx):
        ctx.fan_out("scale", {0: ctx.dims["output"]})

    model = _model_with(Scale)
    x = np.random.default_rng(0).normal(size=(2, 6, 8)).astype("float32")
    big = keras_lemon.expand_model(model, hidden=32, layers=3, seed=0)
    assert relative_error(_outputs(model, x), _outputs(big, x)) <= TOLERANCE


def test_no_residual_stream_is_a_clear_error():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, layers.Dense(2)(layers.Dense(8)(inputs)))
    with pytest.raises(ValueError, match="no residual connection"):
        keras_lemon.expand_model(model, hidden=16)


def test_verify_catches_an_inexact_expansion(monkeypatch):
    """The probe check refuses a model whose outputs changed."""
    from keras_lemon.rules import core_layers

    model = randomize(functional_vit())
    original = core_layers.expand_dense

    def wrong_bias(layer, ctx):
        original(layer, ctx)
        if layer.use_bias and ctx.target is not None:
            ctx.target.bias.assign(ctx.target.bias + 1.0)

    monkeypatch.setitem(keras_lemon.rules.registry._RULES, keras.layers.Dense, wrong_bias)
    with pytest.raises(ValueError, match="not lossless"):
        keras_lemon.expand_model(model, hidden=32, seed=0)


def test_many_new_blocks_stay_exact():
    """Copies must stay bitwise equal, or round-off grows through new blocks.

    With fan-in noise that also differed between the copies of an output
    unit, this 2 -> 8 blocks, 3x width expansion of a freshly initialized
    model was off by 2e-3 relative.
    """
    inputs = keras.Input((16, 8))
    x = layers.Dense(32)(inputs)
    for _ in range(2):
        h = layers.LayerNormalization(epsilon=1e-6)(x)
        x = x + layers.MultiHeadAttention(num_heads=2, key_dim=16)(h, h)
        h = layers.LayerNormalization(epsilon=1e-6)(x)
        x = x + layers.Dense(32)(layers.Dense(64, activation="gelu")(h))
    x = layers.LayerNormalization(epsilon=1e-6)(x)
    model = keras.Model(inputs, layers.Dense(10)(layers.GlobalAveragePooling1D()(x)))
    probe = np.random.default_rng(0).normal(size=(4, 16, 8)).astype("float32")
    big = keras_lemon.expand_model(model, hidden=96, layers=8, seed=0)
    assert relative_error(_outputs(model, probe), _outputs(big, probe)) <= TOLERANCE


def test_attention_free_model_any_pre_ln_width():
    """No attention: no heads constrain the width (16 -> 24 is 1.5x)."""
    model = randomize(residual_mlp())
    probe = np.random.default_rng(0).normal(size=(3, 6, 4)).astype("float32")
    big = keras_lemon.expand_model(model, hidden=24, layers=3, seed=0)
    assert relative_error(_outputs(model, probe), _outputs(big, probe)) <= TOLERANCE
