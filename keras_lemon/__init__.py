"""keras_lemon: lossless model expansion (LEMON) for Keras 3 and keras-hub.

Grow a small pretrained transformer into a larger one whose outputs are
unchanged, then train it with LEMON's accelerated-decay schedule.

References:
    Wang et al., "LEMON: Lossless model expansion", ICLR 2024,
    arXiv:2310.07999.
"""

from keras_lemon import callbacks  # noqa: F401
from keras_lemon import distribution  # noqa: F401
from keras_lemon import rules  # noqa: F401  (registers the built-in rules)
from keras_lemon import schedules  # noqa: F401
from keras_lemon.depth import BlockSpec
from keras_lemon.depth import depth_plan
from keras_lemon.expand import InexactExpansionWarning
from keras_lemon.expand import expand_model
from keras_lemon.expand import expansion_plan
from keras_lemon.index_maps import DimExpansion
from keras_lemon.index_maps import cancel
from keras_lemon.index_maps import fan_in_split
from keras_lemon.index_maps import fan_out
from keras_lemon.optimizer_state import expand_optimizer
from keras_lemon.options import ExpansionOptions
from keras_lemon.options import expansion_options
from keras_lemon.plan import ExpansionPlan
from keras_lemon.presets import expand_preset
from keras_lemon.presets import read_expansion
from keras_lemon.rules.registry import ExpansionContext
from keras_lemon.rules.registry import ExpansionError
from keras_lemon.rules.registry import register_rule
from keras_lemon.version import __version__  # noqa: F401
