"""Expanded models save and load like any model of their class."""

import keras
import keras_hub
import numpy as np
import pytest
from conftest import inputs_for
from conftest import to_numpy

import keras_lemon


def _flat(outputs):
    if isinstance(outputs, dict):
        return np.concatenate([outputs[k].ravel() for k in sorted(outputs)])
    return outputs


@pytest.mark.parametrize("model_name", ["BertMaskedLM", "ViTImageClassifier", "BertBackbone"])
def test_keras_file_round_trip(make_model, model_name, tmp_path):
    model = make_model(model_name)
    big = keras_lemon.expand_model(model, hidden=32, layers=3, seed=0)
    path = str(tmp_path / "big.keras")
    big.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(big)
    x = inputs_for(model)
    np.testing.assert_allclose(_flat(to_numpy(loaded(x))), _flat(to_numpy(big(x))), rtol=0, atol=1e-6)


@pytest.mark.parametrize("model_name", ["BertBackbone", "ViTImageClassifierGap"])
def test_preset_round_trip(make_model, model_name, tmp_path):
    model = make_model(model_name)
    big = keras_lemon.expand_model(model, hidden=32, layers=4, seed=0)
    big.save_to_preset(str(tmp_path))
    cls = keras_hub.models.Backbone if model_name == "BertBackbone" else type(big)
    loaded = cls.from_preset(str(tmp_path))
    assert type(loaded) is type(big)
    x = inputs_for(model)
    np.testing.assert_allclose(_flat(to_numpy(loaded(x))), _flat(to_numpy(big(x))), rtol=0, atol=1e-6)
