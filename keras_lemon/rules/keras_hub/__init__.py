"""Rules for keras-hub layers, one module per family (registered on import)."""

from keras_lemon.rules.keras_hub import deberta_v3  # noqa: F401
from keras_lemon.rules.keras_hub import gemma  # noqa: F401
from keras_lemon.rules.keras_hub import gpt_neo_x  # noqa: F401
from keras_lemon.rules.keras_hub import llama  # noqa: F401
from keras_lemon.rules.keras_hub import llama_like  # noqa: F401
from keras_lemon.rules.keras_hub import modeling  # noqa: F401
from keras_lemon.rules.keras_hub import roformer_v2  # noqa: F401
from keras_lemon.rules.keras_hub import smollm3  # noqa: F401
