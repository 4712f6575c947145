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
import warnings
import weakref

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
    elif keras.backend.backend() == "torch" and isinstance(value, np.ndarray):
        value = _torch_tensor(value)
    variable._initializer = lambda shape, dtype=None: value
    variable._deferred_initialize()
    variable._initializer = None


def _torch_tensor(value):
    """The CPU tensor for a computed array, copying only what must be copied.

    torch's `convert_to_tensor` copies every NumPy array (`np.array`, one
    thread, into fresh memory: page faults dominate). An array no one else
    holds becomes the tensor's memory as it is; another (a read-only view
    of a source variable) is copied by torch, whose copy runs on all cores.
    """
    import torch

    if value.dtype not in (np.float16, np.float32, np.float64):
        return value  # bfloat16 (ml_dtypes) and others: keras' own conversion
    if _unshared(value):
        return torch.from_numpy(value)
    if not value.flags.c_contiguous:
        return torch.from_numpy(np.ascontiguousarray(value))  # a fresh copy of its own
    with warnings.catch_warnings():
        # from_numpy warns on read-only arrays; the clone never writes back.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(value).clone()


_handed_over = {}  # id -> weak reference of the arrays given to torch variables


def _unshared(value):
    """An array computed for this variable alone: it owns its memory (not a
    view of a source variable's), and was not handed to another variable."""
    if not (isinstance(value, np.ndarray) and value.flags.owndata
            and value.flags.c_contiguous and value.flags.writeable):
        return False
    key = id(value)
    ref = _handed_over.get(key)
    if ref is not None and ref() is value:
        return False
    # The entry goes when the array does (before its id can be reused).
    _handed_over[key] = weakref.ref(value, lambda _: _handed_over.pop(key, None))
    return True


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
