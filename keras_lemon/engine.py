"""The expansion session: runs layer rules, writes target variables, checks coverage.

Rules (see `keras_lemon.rules`) compute every target weight in NumPy; the
session reads source variables once, assigns each computed array to its
target variable (checking the shape), records a `PlanRow` for it, and at the
end checks that every target variable was written exactly once, so that no
expanded model can silently keep a random initialization.
"""

import keras
import numpy as np

from keras_lemon import deferred
from keras_lemon.plan import PlanRow
from keras_lemon.rules.registry import ExpansionContext
from keras_lemon.rules.registry import ExpansionError
from keras_lemon.rules.registry import get_rule


class ExpansionSession:
    """Runs rules for one expansion (or one plan when `planning=True`).

    Args:
        method: `"lemon"`, `"net2net"` or `"zero_blocks"` (see `expand_model`).
        seed: int, seeds every random draw (with each variable's path).
        noise_scale: float, multiplies the standard deviation of every
            symmetry-breaking draw (see `expand_model`).
        planning: when True there is no target model; rules run on the
            source weights only and the session records the plan.
        progress: optional callable `progress(done, total, path)`, called
            after each target variable is written (`total` is the number of
            target variables known so far, see `expect`).
    """

    def __init__(self, method, seed, planning=False, progress=None, noise_scale=1.0):
        self.method = method
        self.seed = int(seed)
        self.noise_scale = float(noise_scale)
        self.planning = planning
        self.progress = progress
        self.rows = []
        self._written = {}
        self._expected = 0

    def expect(self, count):
        """Announces `count` more target variables (the progress total)."""
        self._expected += count

    def read(self, variable):
        # The variable's tensor, not the Variable: keras' convert_to_numpy
        # of a Variable is ~16x slower on torch (~3x on JAX).
        value = variable.value if isinstance(variable, keras.Variable) else variable
        if keras.backend.backend() == "torch" and value.device.type == "cpu" \
                and str(value.dtype) == "torch.float32":
            # A read-only view of the tensor's memory: a copy would cost a
            # fresh allocation (page faults) per source variable.
            array = value.detach().numpy()
            array.flags.writeable = False
            return array
        return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float32)

    def expand_layer(self, source, target, path, dims, flags=None, rule=None):
        """Expands `source` into `target` (None when planning) with its rule.

        `rule` overrides the registered rule (the adapters use it for the
        variables that a custom layer or model creates itself).
        """
        rule = rule or get_rule(source)
        if rule is None:
            if not source.weights:
                return
            raise ExpansionError(
                f"Layer '{path}' ({type(source).__name__}) has weights but no "
                "expansion rule. Register one with "
                f"`keras_lemon.register_rule({type(source).__name__})`."
            )
        if target is not None and type(target) is not type(source):
            raise ExpansionError(
                f"Layer '{path}': the target layer is a {type(target).__name__}, "
                f"the source a {type(source).__name__}."
            )
        rule(source, ExpansionContext(source, target, path, dims, flags, self))

    def record(self, ctx, name, source_variable, value, how):
        # Paths use the variable's own name ("output_bias"), not the Python
        # attribute ("_bias"), so that they match `target.weights` paths.
        path = f"{ctx.path}/{source_variable.name}"
        source_shape = tuple(source_variable.shape)
        self.rows.append(PlanRow(path, source_shape, tuple(value.shape), how))
        if ctx.target is None:
            return
        var = getattr(ctx.target, name)
        if tuple(var.shape) != tuple(value.shape):
            raise ExpansionError(
                f"Layer '{ctx.path}': rule computed {name} of shape "
                f"{tuple(value.shape)} but the target variable has shape "
                f"{tuple(var.shape)}. The target config and the requested "
                "sizes disagree."
            )
        if id(var) in self._written:
            raise ExpansionError(f"Variable '{var.path}' was written twice ({path}).")
        if deferred.is_deferred(var):
            deferred.initialize_with(var, value)
        else:
            var.assign(value)
        self._written[id(var)] = path
        if self.progress is not None:
            self.progress(len(self._written), max(self._expected, len(self._written)), path)

    def check_complete(self, target_model):
        """Raises if any target weight was not written by a rule."""
        missing = [v.path for v in target_model.weights if id(v) not in self._written]
        if missing:
            raise ExpansionError(
                "No rule wrote these target variables (they would keep their "
                f"random initialization): {missing[:10]}"
                + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            )
