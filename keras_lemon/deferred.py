"""Build a target model without paying for its random initialization.

Every weight of an expanded model is overwritten by a rule, so initializing
it first (random draws on the backend: ~16 s for a 730M-parameter BERT on
2 CPU cores, and a second copy of the model in memory while it is replaced)
is wasted. Keras creates variables *uninitialized* inside
`keras.StatelessScope(initialize_variables=False)`; this module builds the
target there and then initializes each variable directly with its computed
value.

This uses two Keras internals (`Variable._deferred_initialize` and the global
list of uninitialized variables). When they are missing,
`deferred_initialization()` does nothing and variables initialize as usual.
"""

import contextlib

import keras
import ml_dtypes
import numpy as np

try:
    from keras.src.backend.common import global_state
    from keras.src.backend.common.variables import Variable as _BaseVariable
    from keras.src.backend.common.variables import initialize_all_variables

    _SUPPORTED = hasattr(_BaseVariable, "_deferred_initialize")
except ImportError:  # pragma: no cover - other Keras versions
    _SUPPORTED = False


@contextlib.contextmanager
def deferred_initialization():
    """Variables created inside stay uninitialized; `finish()` must follow.

    Without the Keras internals this is a no-op (variables initialize as usual).
    """
    if not _SUPPORTED:
        yield
        return
    with keras.StatelessScope(initialize_variables=False):
        yield


def is_deferred(variable):
    return _SUPPORTED and getattr(variable, "_value", 0) is None


def initialize_with(variable, value):
    """Initializes a deferred variable with `value` (no random draw), cast to its dtype.

    Keras initializes a variable with what its initializer returns, without
    casting: a float32 value would sit in a bfloat16 variable (twice the
    memory, and not what `assign` would have stored).
    """
    if _sharded_on_jax(variable):
        # Under a keras.distribution scope: each device takes its shard
        # straight from the host array (`jax.device_put`; on several hosts
        # each host computes the same array from the same seed). The
        # initializer path would compile the value into a jitted constant.
        variable._initializer = None
        variable._initialize(np.asarray(value).astype(_numpy_dtype(variable.dtype)))
        return
    if np.asarray(value).dtype != _numpy_dtype(variable.dtype):
        value = keras.ops.cast(value, variable.dtype)
    variable._initializer = lambda shape, dtype=None: value
    variable._deferred_initialize()
    variable._initializer = None


def _sharded_on_jax(variable):
    if keras.backend.backend() != "jax":
        return False
    variable._initialize_layout()  # the distribution's layout for its path, or None
    return variable._layout is not None


def _numpy_dtype(dtype):
    return ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)


def finish():
    """Initializes what is still deferred (e.g. dropout seed states) normally."""
    if not _SUPPORTED:
        return
    pending = global_state.get_global_attribute("uninitialized_variables", [])
    global_state.set_global_attribute(
        "uninitialized_variables", [v for v in pending if v._value is None]
    )
    initialize_all_variables()


def discard():
    """Forgets the variables still deferred: a target built only for its sizes
    (`expansion_plan`) is dropped without ever being initialized."""
    if _SUPPORTED:
        global_state.set_global_attribute("uninitialized_variables", [])
