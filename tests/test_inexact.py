"""`exact=False`: the best approximation for what cannot be exact, measured, never called lossless.

A post-LN model (BERT, RoBERTa) grown to a width that is not a multiple of
its own gets partial copies of the stream, which shift every LayerNorm's
mean and variance. By default that is refused; with `exact=False` it is
built, its error measured on the probe batch and reported as an
`InexactExpansionWarning` (and in an expanded preset's metadata and the
CLI), while requests that are exact anyway are checked as usual.
"""

import warnings

import keras
import keras_hub
import numpy as np
import pytest
from census_configs import CONFIGS
from conftest import bert_backbone
from conftest import randomize
from preset_builders import bert_backbone_preset

import keras_lemon
from keras_lemon import InexactExpansionWarning
from keras_lemon.cli import main


def _expand_recording(model, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        big = keras_lemon.expand_model(model, seed=0, **kwargs)
    return big, [w.message for w in caught if isinstance(w.message, InexactExpansionWarning)]


def test_default_refusal_points_to_exact_false():
    with pytest.raises(ValueError, match="multiple of 16.*exact=False"):
        keras_lemon.expand_model(bert_backbone(), hidden=24, heads=3)


@pytest.mark.parametrize("make", [
    lambda: bert_backbone(),
    lambda: randomize(keras_hub.models.BertMaskedLM(bert_backbone()), 1),
    lambda: randomize(keras_hub.models.RobertaMaskedLM(
        keras_hub.models.RobertaBackbone(**CONFIGS["RobertaBackbone"])), 1),
], ids=["BertBackbone", "BertMaskedLM", "RobertaMaskedLM"])
def test_inexact_width_is_built_measured_and_reported(make):
    model = make()
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.weights]
    big, reports = _expand_recording(model, hidden=24, heads=3, layers=3, exact=False)
    assert type(big) is type(model)
    assert len(reports) == 1
    # Not lossless, and said so: the error is measured (finite, above fp32 round-off).
    assert 1e-4 < reports[0].error < 1.0 and "NOT lossless" in str(reports[0])
    assert all(np.array_equal(a, keras.ops.convert_to_numpy(v))
               for a, v in zip(before, model.weights))


def test_exact_false_changes_nothing_for_exact_requests():
    model = bert_backbone()
    big, reports = _expand_recording(model, hidden=32, exact=False)
    assert not reports
    reference = keras_lemon.expand_model(model, hidden=32, seed=0)
    for a, b in zip(big.weights, reference.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_inexact_preset_records_the_error_and_not_losslessness(tmp_path, capsys):
    src = str(tmp_path / "small")
    bert_backbone_preset(src)
    keras_lemon.expand_preset(src, str(tmp_path / "big"), hidden=24, heads=3, seed=0,
                              exact=False)
    record = keras_lemon.read_expansion(str(tmp_path / "big"))
    assert record["exact"] is False and record["lossless_error"] is None
    assert 0 < record["approximation_error"] < 1.0
    assert keras_hub.models.BertBackbone.from_preset(str(tmp_path / "big")).hidden_dim == 24
    code = main(["expand", src, str(tmp_path / "cli"), "--hidden", "24", "--heads", "3",
                 "--inexact", "--seed", "0"])
    out = capsys.readouterr().out
    assert code == 0 and "NOT lossless (--inexact): approximation error" in out
    assert "lossless check" not in out
