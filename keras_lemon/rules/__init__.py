"""Per-layer expansion rules, in a registry keyed by layer class."""

from keras_lemon.rules import core_layers  # noqa: F401  (registers rules)
from keras_lemon.rules import keras_hub  # noqa: F401  (keras-hub layers)
from keras_lemon.rules.registry import ExpansionContext
from keras_lemon.rules.registry import ExpansionError
from keras_lemon.rules.registry import get_rule
from keras_lemon.rules.registry import register_rule
