"""Prints a checksum of an expanded model's weights (run per backend by a test)."""

import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])

from conftest import bert_backbone  # noqa: E402
from conftest import vit_backbone  # noqa: E402
from conftest import weights_hash  # noqa: E402

import keras_lemon  # noqa: E402

bert = keras_lemon.expand_model(bert_backbone(), hidden=32, layers=5, heads=2, seed=7)
vit = keras_lemon.expand_model(vit_backbone(), hidden=40, heads=5, layers=3, seed=7)
print("CHECKSUM", weights_hash(bert), weights_hash(vit))
