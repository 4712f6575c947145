"""keras-hub backbones and keras.io examples through the one general path.

Every model is traced, its roles inferred from the graph, rebuilt from its
config and written by the layer rules
(`keras_lemon.support.graph_adapter`). Every weight is randomized (norm
gammas and betas too); `census.check_request` compares all outputs with the
source's at `TOLERANCE` on random inputs and checks the source is unchanged.
"""

import keras
import keras_hub
import numpy as np
import pytest
from census import check_request
from census import random_inputs
from census_configs import CONFIGS
from conftest import TOLERANCE
from conftest import randomize
from conftest import relative_error
from keras_io_models import masked_language_bert
from preset_builders import hf_distilbert_directory
from preset_builders import tree_digest
from keras_io_models import text_classification_transformer

import keras_lemon

POST_LN = ["RobertaBackbone", "XLMRobertaBackbone", "DistilBertBackbone", "ElectraBackbone"]
CASES = {
    "width_x2_head_size_grows": dict(hidden=32, heads=2),
    "width_x3_and_depth_interleave": dict(hidden=48, layers=5),
    "depth_stack": dict(layers=5, placement="stack"),
    "width_and_depth_net2net": dict(hidden=32, layers=3, method="net2net"),
    "width_and_depth_zero_blocks": dict(hidden=32, layers=4, method="zero_blocks"),
}


def build(name):
    return randomize(getattr(keras_hub.models, name)(**CONFIGS[name]))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", POST_LN)
def test_post_ln_encoders_lossless(name, case):
    status, error = check_request(build(name), CASES[case])
    assert status == "yes", error


@pytest.mark.parametrize("name", POST_LN)
def test_post_ln_non_multiple_width_is_refused(name):
    model = build(name)
    with pytest.raises(ValueError, match=f"{type(model).__name__}.*post-LN.*multiple of 16"):
        keras_lemon.expand_model(model, hidden=24)


def test_pre_ln_dinov2_width_multiples():
    status, error = check_request(build("DINOV2Backbone"), dict(hidden=48, heads=6))
    assert status == "yes", error


def test_pre_ln_dinov2_layer_scale_refuses_non_multiples():
    # LayerScale multiplies the branch per feature: an averaged extra unit
    # would need mean(z * gamma) = mean(z) * gamma', not true in general.
    with pytest.raises(ValueError, match="DINOV2Backbone.*per-feature.*multiple of 16"):
        keras_lemon.expand_model(build("DINOV2Backbone"), hidden=24, heads=3)


def test_expanded_roberta_saves_and_reloads(tmp_path):
    model = build("RobertaBackbone")
    big = keras_lemon.expand_model(model, hidden=32, layers=3, seed=0)
    assert (big.hidden_dim, big.num_layers, big.num_heads) == (32, 3, 4)
    path = str(tmp_path / "big.keras")
    big.save(path)
    again = keras.saving.load_model(path)
    inputs = random_inputs(model)
    a = keras.ops.convert_to_numpy(big(inputs)["sequence_output"] if isinstance(big(inputs), dict)
                                   else big(inputs))
    b = keras.ops.convert_to_numpy(again(inputs)["sequence_output"] if isinstance(again(inputs), dict)
                                   else again(inputs))
    assert type(again) is type(big) and relative_error(a, b) <= 1e-6


def test_expansion_options_of_a_general_path_backbone():
    options = keras_lemon.expansion_options(build("ElectraBackbone"))
    assert options.post_ln and options.sizes.hidden == 16 and options.sizes.layers == 2
    assert "ElectraBackbone" in options.family


@pytest.mark.parametrize("blocks,request_", [(1, dict(hidden=16)), (1, dict(layers=2)),
                                             (2, dict(hidden=16, layers=4)),
                                             (2, dict(hidden=24, layers=3))])
def test_keras_io_text_classification_transformer(blocks, request_):
    """As published: MultiHeadAttention(key_dim=embed_dim), no get_config, post-LN."""
    model = randomize(text_classification_transformer(blocks=blocks))
    inputs = np.random.default_rng(0).integers(0, 50, (3, 10)).astype("int32")
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.weights]
    big = keras_lemon.expand_model(model, seed=0, **request_)
    error = relative_error(keras.ops.convert_to_numpy(model(inputs)),
                           keras.ops.convert_to_numpy(big(inputs)))
    assert error <= TOLERANCE
    assert all(np.array_equal(a, keras.ops.convert_to_numpy(v))
               for a, v in zip(before, model.weights))


def test_expand_preset_general_path_backbone(tmp_path):
    model = build("DistilBertBackbone")
    model.save_to_preset(str(tmp_path / "src"))
    keras_lemon.expand_preset(str(tmp_path / "src"), str(tmp_path / "dst"),
                              hidden=32, layers=3, seed=0)
    record = keras_lemon.read_expansion(str(tmp_path / "dst"))
    assert record["model_class"] == "DistilBertBackbone"
    assert record["target_sizes"] == dict(layers=3, hidden=32, heads=4, intermediate=64)
    assert record["lossless_error"] <= 1e-5
    loaded = keras_hub.models.Backbone.from_preset(str(tmp_path / "dst"))
    assert type(loaded) is keras_hub.models.DistilBertBackbone and loaded.hidden_dim == 32


def test_expand_preset_refused_class_names_reason_and_writes_nothing(tmp_path):
    randomize(keras_hub.models.FNetBackbone(**CONFIGS["FNetBackbone"])).save_to_preset(
        str(tmp_path / "fnet"))
    with pytest.raises(ValueError, match="fnet': FNetBackbone cannot be expanded: FNet mixes"):
        keras_lemon.expand_preset(str(tmp_path / "fnet"), str(tmp_path / "dst"), hidden=32)
    assert not (tmp_path / "dst").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fnet"]


TASKS = [("RobertaBackbone", "RobertaMaskedLM"), ("DistilBertBackbone", "DistilBertTextClassifier"),
         ("XLMRobertaBackbone", "XLMRobertaTextClassifier")]


@pytest.mark.parametrize("backbone,task", TASKS)
def test_tasks_width_and_depth(backbone, task):
    task_class = getattr(keras_hub.models, task)
    kwargs = {"num_classes": 3} if "Classifier" in task else {}
    model = randomize(task_class(build(backbone), **kwargs), 1)
    status, error = check_request(model, dict(hidden=48, layers=5, placement="stack"))
    assert status == "yes", error
    big = keras_lemon.expand_model(model, hidden=32, seed=0)
    assert type(big) is task_class and big.backbone.hidden_dim == 32


def test_tied_masked_lm_head_is_scaled_not_untied():
    model = randomize(keras_hub.models.RobertaMaskedLM(build("RobertaBackbone")), 1)
    big = keras_lemon.expand_model(model, hidden=48, seed=0)
    head = big.get_layer("mlm_head")
    assert head.token_embedding is big.backbone.token_embedding  # still tied
    gamma = keras.ops.convert_to_numpy(head._intermediate_layer_norm.gamma)
    source = keras.ops.convert_to_numpy(model.get_layer("mlm_head")._intermediate_layer_norm.gamma)
    np.testing.assert_allclose(gamma, np.tile(source, 3) / 3, rtol=1e-6)


def test_expand_preset_of_a_general_path_task(tmp_path):
    model = randomize(keras_hub.models.RobertaMaskedLM(build("RobertaBackbone")), 1)
    model.save_to_preset(str(tmp_path / "src"))
    keras_lemon.expand_preset(str(tmp_path / "src"), str(tmp_path / "dst"), hidden=32,
                              layers=3, seed=0)
    record = keras_lemon.read_expansion(str(tmp_path / "dst"))
    assert record["model_class"] == "RobertaMaskedLM" and record["lossless_error"] <= 1e-5
    loaded = keras_hub.models.RobertaMaskedLM.from_preset(str(tmp_path / "dst"))
    assert loaded.backbone.hidden_dim == 32 and loaded.backbone.num_layers == 3


@pytest.mark.parametrize("blocks,request_", [(1, dict(hidden=32)), (1, dict(layers=2)),
                                             (2, dict(hidden=48, layers=4, placement="stack"))])
def test_keras_io_masked_language_bert(blocks, request_):
    """As published: the position table is a constant added to the stream (grows like a bias)."""
    model = randomize(masked_language_bert(num_layers=blocks))
    inputs = np.random.default_rng(0).integers(0, 50, (3, 10)).astype("int32")
    big = keras_lemon.expand_model(model, seed=0, **request_)
    error = relative_error(keras.ops.convert_to_numpy(model(inputs)),
                           keras.ops.convert_to_numpy(big(inputs)))
    assert error <= TOLERANCE
    # The table is the source's, copied circularly to the new width.
    source_table, table = _added_constant(model), _added_constant(big)
    hidden = request_.get("hidden", 16)
    assert table.shape == (10, hidden)
    np.testing.assert_array_equal(table, np.tile(source_table, (1, hidden // 16)))


def _added_constant(model):
    """The constant array an `Add` of the model's graph reads."""
    for operation in model._operations:
        if type(operation).__name__ == "Add":
            for value in operation._inbound_nodes[0].arguments.args:
                if not isinstance(value, keras.KerasTensor):
                    return keras.ops.convert_to_numpy(value)
    raise AssertionError("no constant added in the graph")


def test_expand_preset_from_a_hugging_face_distilbert_directory(tmp_path):
    src = hf_distilbert_directory(str(tmp_path / "hf"))
    before = tree_digest(src)
    keras_lemon.expand_preset(src, str(tmp_path / "dst"), hidden=32, layers=3, seed=0)
    record = keras_lemon.read_expansion(str(tmp_path / "dst"))
    assert record["source_format"] == "transformers" and record["lossless_error"] <= 1e-5
    assert record["probe"].startswith("4 English sentences")  # its own tokenizer
    assert keras_hub.models.DistilBertBackbone.from_preset(str(tmp_path / "dst")).num_layers == 3
    assert keras_hub.models.Tokenizer.from_preset(str(tmp_path / "dst")) is not None
    assert tree_digest(src) == before
