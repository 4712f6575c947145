"""`expand_preset`: Keras and Hugging Face-format presets in, a Keras preset out.

Every source preset is made in the test with all weights random. The written
preset is reloaded with keras-hub (the task class and `Backbone.from_preset`)
and compared with the source on real sentences / images (tolerance 1e-5).
"""

import os

import keras
import keras_hub
import numpy as np
import pytest
from conftest import TOLERANCE
from conftest import bert_backbone
from preset_builders import bert_backbone_preset
from preset_builders import bert_masked_lm_preset
from preset_builders import hf_bert_directory
from preset_builders import tree_digest
from preset_builders import vit_classifier_preset

import keras_lemon
from keras_lemon.adapters.keras_models import KerasModelAdapter
from keras_lemon.presets import METADATA_KEY
from keras_lemon.support import GraphFamily

BERT = GraphFamily(keras_hub.models.BertBackbone)
VIT = GraphFamily(keras_hub.models.ViTBackbone)


def _leftovers(parent, name):
    return [n for n in os.listdir(parent) if n.startswith(f".{name}.lemon-")]


def test_bert_masked_lm_preset_with_preprocessor(tmp_path):
    src, dst = str(tmp_path / "small"), str(tmp_path / "big")
    source = bert_masked_lm_preset(src)
    before = tree_digest(src)
    big = keras_lemon.expand_preset(src, dst, hidden=32, layers=5, heads=2, seed=3)
    assert tree_digest(src) == before  # the source preset is never modified
    assert sorted(os.listdir(dst)) == sorted(os.listdir(src))  # task, preprocessor, assets

    reloaded = keras_hub.models.BertMaskedLM.from_preset(dst)
    assert (reloaded.backbone.num_layers, reloaded.backbone.hidden_dim) == (5, 32)
    assert reloaded.backbone.num_heads == 2  # head size grew 8 -> 16
    assert BERT.verify(source, reloaded, BERT.probe_inputs(source), TOLERANCE) <= TOLERANCE
    # The preprocessor came along and tokenizes as the source's does.
    text = ["the word of one"]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(reloaded.preprocessor.tokenizer(text[0])),
        keras.ops.convert_to_numpy(source.preprocessor.tokenizer(text[0])),
    )
    backbone = keras_hub.models.Backbone.from_preset(dst)
    assert isinstance(backbone, keras_hub.models.BertBackbone) and backbone.num_layers == 5
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(big.backbone.token_embedding.embeddings),
        keras.ops.convert_to_numpy(backbone.token_embedding.embeddings),
    )

    record = keras_lemon.read_expansion(dst)
    assert record["source"] == os.path.abspath(src)
    assert record["source_format"] == "keras"
    assert record["model_class"] == "BertMaskedLM"
    assert record["source_sizes"] == {"layers": 2, "hidden": 16, "heads": 2, "intermediate": 32}
    assert record["target_sizes"] == {"layers": 5, "hidden": 32, "heads": 2, "intermediate": 64}
    assert (record["method"], record["placement"], record["seed"]) == ("lemon", "interleave", 3)
    assert 0 < record["lossless_error"] <= TOLERANCE
    assert "English sentences" in record["probe"]
    assert record["backend"] == keras.backend.backend()
    assert keras_lemon.read_expansion(src) is None


def test_backbone_preset_keeps_its_tokenizer(tmp_path):
    src, dst = str(tmp_path / "small"), str(tmp_path / "big")
    source = bert_backbone_preset(src)
    keras_lemon.expand_preset(src, dst, hidden=48, method="net2net", placement="stack",
                              layers=3, seed=0)
    assert os.path.exists(os.path.join(dst, "tokenizer.json"))
    tokenizer = keras_hub.models.Tokenizer.from_preset(dst)
    assert tokenizer.vocabulary_size() == source.vocabulary_size
    reloaded = keras_hub.models.BertBackbone.from_preset(dst)
    error = BERT.verify(source, reloaded, BERT.probe_inputs(source, tokenizer), TOLERANCE)
    assert error <= TOLERANCE
    record = keras_lemon.read_expansion(dst)
    assert (record["method"], record["placement"]) == ("net2net", "stack")
    # A task class loads the backbone preset too (new head, as keras-hub does).
    classifier = keras_hub.models.BertTextClassifier.from_preset(dst, num_classes=2)
    assert classifier.backbone.hidden_dim == 48


def test_vit_classifier_preset_with_image_converter(tmp_path):
    src, dst = str(tmp_path / "small"), str(tmp_path / "big")
    source = vit_classifier_preset(src)
    keras_lemon.expand_preset(src, dst, hidden=40, heads=5, layers=3, seed=1)
    reloaded = keras_hub.models.ViTImageClassifier.from_preset(dst)
    assert reloaded.backbone.hidden_dim == 40
    assert VIT.verify(source, reloaded, VIT.probe_inputs(source), TOLERANCE) <= TOLERANCE
    converter = reloaded.preprocessor.image_converter
    assert tuple(converter.image_size) == (8, 8)
    assert "images" in keras_lemon.read_expansion(dst)["probe"]


def test_hugging_face_directory(tmp_path):
    src, dst = hf_bert_directory(str(tmp_path / "hf")), str(tmp_path / "big")
    source = keras_hub.models.BertBackbone.from_preset(src)
    tokenizer = keras_hub.models.Tokenizer.from_preset(src)
    keras_lemon.expand_preset(src, dst, hidden=32, heads=2, layers=4, seed=0)
    assert {"config.json", "model.weights.h5", "metadata.json", "tokenizer.json"} <= set(
        os.listdir(dst))
    reloaded = keras_hub.models.Backbone.from_preset(dst)
    error = BERT.verify(source, reloaded, BERT.probe_inputs(source, tokenizer), TOLERANCE)
    assert error <= TOLERANCE
    record = keras_lemon.read_expansion(dst)
    assert record["source_format"] == "transformers"
    assert record["lossless_error"] <= TOLERANCE


def test_existing_destination_needs_overwrite(tmp_path):
    src, dst = str(tmp_path / "small"), tmp_path / "big"
    bert_backbone_preset(src)
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not empty.*overwrite"):
        keras_lemon.expand_preset(src, str(dst), hidden=32)
    assert os.listdir(dst) == ["keep.txt"]
    keras_lemon.expand_preset(src, str(dst), hidden=32, overwrite=True, seed=0)
    assert "keep.txt" not in os.listdir(dst)
    assert keras_hub.models.BertBackbone.from_preset(str(dst)).hidden_dim == 32
    assert _leftovers(tmp_path, "big") == []
    # An existing empty directory is fine without overwrite.
    (tmp_path / "empty").mkdir()
    keras_lemon.expand_preset(src, str(tmp_path / "empty"), layers=3, seed=0)
    assert keras_lemon.read_expansion(str(tmp_path / "empty"))["target_sizes"]["layers"] == 3


@pytest.mark.parametrize("kwargs,match", [
    (dict(hidden=24), "post-LN: hidden must be a multiple of 16"),
    (dict(layers=1), "layers=1 would shrink"),
    (dict(method="magic"), "method must be one of"),
])
def test_invalid_request_writes_nothing(tmp_path, kwargs, match):
    src, dst = str(tmp_path / "small"), str(tmp_path / "big")
    bert_backbone_preset(src)
    with pytest.raises(ValueError, match=match):
        keras_lemon.expand_preset(src, dst, **kwargs)
    assert not os.path.exists(dst) and _leftovers(tmp_path, "big") == []


def test_not_lossless_writes_nothing(tmp_path, monkeypatch):
    src, dst = str(tmp_path / "small"), str(tmp_path / "big")
    bert_backbone_preset(src)
    real_save = keras_lemon.presets.LoadedPreset.save

    def corrupting_save(self, model, directory):  # a broken writer: one weight off
        variable = model.get_layer("pooled_dense").bias
        variable.assign(keras.ops.convert_to_numpy(variable) + 1.0)
        real_save(self, model, directory)

    monkeypatch.setattr(keras_lemon.presets.LoadedPreset, "save", corrupting_save)
    with pytest.raises(keras_lemon.ExpansionError, match="not lossless"):
        keras_lemon.expand_preset(src, dst, hidden=32, seed=0)
    assert not os.path.exists(dst) and _leftovers(tmp_path, "big") == []


def test_bad_sources(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        keras_lemon.expand_preset(str(tmp_path / "missing"), str(tmp_path / "big"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        keras_lemon.expand_preset(str(tmp_path / "empty"), str(tmp_path / "big"))
    src = str(tmp_path / "small")
    bert_backbone_preset(src)
    with pytest.raises(ValueError, match="is the source preset"):
        keras_lemon.expand_preset(src, src, hidden=32)
    other = keras_hub.models.FNetBackbone(
        vocabulary_size=50, num_layers=1, hidden_dim=8, intermediate_dim=16,
        max_sequence_length=12)
    other.save_to_preset(str(tmp_path / "fnet"))
    with pytest.raises(ValueError, match="FNetBackbone cannot be expanded: FNet mixes features "
                                         "with an FFT.*Supported: BertBackbone"):
        keras_lemon.expand_preset(str(tmp_path / "fnet"), str(tmp_path / "big"))
    assert not os.path.exists(tmp_path / "big")


def test_progress_reports_every_variable(tmp_path):
    src = str(tmp_path / "small")
    bert_masked_lm_preset(src)
    calls = []
    big = keras_lemon.expand_preset(src, str(tmp_path / "big"), layers=3, seed=0,
                                    progress=lambda done, total, path: calls.append((done, total)))
    assert [done for done, _ in calls] == list(range(1, len(big.weights) + 1))
    assert calls[-1] == (len(big.weights), len(big.weights))


def test_expand_model_verifies_keras_hub_models(monkeypatch):
    source = bert_backbone()
    big = keras_lemon.expand_model(source, hidden=32, seed=0)  # verify=True by default passes
    assert big.hidden_dim == 32
    original = KerasModelAdapter.verify
    seen = []
    monkeypatch.setattr(KerasModelAdapter, "verify",
                        lambda self, *a, **k: seen.append(original(self, *a, **k)))
    keras_lemon.expand_model(source, hidden=32, seed=0)
    keras_lemon.expand_model(source, hidden=32, seed=0, verify=False)
    assert len(seen) == 1 and seen[0] <= TOLERANCE


def test_unwritable_destination_is_refused_before_loading(tmp_path):
    src = str(tmp_path / "small")
    bert_backbone_preset(src)
    with pytest.raises(ValueError, match="cannot be written: '/proc' is not a writable"):
        keras_lemon.expand_preset(src, "/proc/lemon-out", hidden=32)


@pytest.mark.parametrize("config_file,text", [("task.json", "{'not': json}"),
                                               ("config.json", '{"module": "keras_hub", ')])
def test_malformed_json_names_the_file(tmp_path, config_file, text):
    src = tmp_path / "small"
    bert_backbone_preset(str(src))
    (src / config_file).write_text(text)
    with pytest.raises(ValueError, match=f"small': {config_file} is not valid JSON"):
        keras_lemon.expand_preset(str(src), str(tmp_path / "big"), hidden=32)


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    src = hf_bert_directory(str(tmp_path / "hf"))
    path = os.path.join(src, "model.safetensors")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="hf': its safetensors weights cannot be read.*truncated"):
        keras_lemon.expand_preset(src, str(tmp_path / "big"), hidden=32)
    assert not (tmp_path / "big").exists()
