"""Keras callbacks for training an expanded model the LEMON way.

- `LemonEpochScheduler`: a per-epoch schedule (DeiT-style recipes defined in
  epochs) for optimizers whose learning rate is a float.
- `ComputeBudget`: stops when the compressed schedule ends and logs the
  compute used against the from-scratch budget.
- `LosslessCheck`: at train begin, checks the expanded model against its
  source on a probe batch, so that a mistake between expansion and training
  (a reloaded wrong checkpoint, a layer re-initialized) fails loudly.
- `SymmetryMonitor`: logs how far the copies of duplicated units have
  drifted apart: the evidence that LEMON's symmetry breaking works.

Each writes its values into Keras' `logs` dict, so `History`, `CSVLogger` and
`TensorBoard` record them. They reach the model through `self.model` (on JAX
a held optimizer reference would read stale variables).

References:
    Wang et al., "LEMON: Lossless model expansion", ICLR 2024,
    arXiv:2310.07999.
"""

import keras
import numpy as np

from keras_lemon.lossless import dtype_tolerance
from keras_lemon.lossless import output_error
from keras_lemon.schedules import LemonSchedule


class LemonEpochScheduler(keras.callbacks.Callback):
    """Sets the learning rate at each epoch from a schedule over epochs.

    For recipes defined per epoch (DeiT: warmup 5 epochs, cosine over the
    rest), with an optimizer whose `learning_rate` is a float. Logs
    `"learning_rate"` at each epoch end.

    Args:
        schedule: a `LemonSchedule` whose steps are epochs (or any callable
            `epoch -> learning rate`).

    Example:

    >>> schedule = LemonSchedule.from_recipe(1e-3, total_steps=300,
    ...     fraction=130 / 300, warmup_steps=5, initial_learning_rate=1e-6,
    ...     end_learning_rate=1e-5)
    >>> callback = LemonEpochScheduler(schedule)
    """

    def __init__(self, schedule):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"schedule must be callable (epoch -> rate), got {schedule!r}.")
        self.schedule = schedule

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        if isinstance(optimizer._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            raise ValueError(
                "LemonEpochScheduler sets a float learning rate each epoch, but the "
                "optimizer's learning_rate is a per-step schedule "
                f"({type(optimizer._learning_rate).__name__}). Use one or the other."
            )
        optimizer.learning_rate = float(keras.ops.convert_to_numpy(self.schedule(epoch)))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(
                self.model.optimizer.learning_rate))


class ComputeBudget(keras.callbacks.Callback):
    """Stops at the end of the compressed schedule; logs compute against scratch.

    Logs at each epoch end: `"budget_steps"` (optimizer steps so far),
    `"budget_fraction"` (steps / `scratch_steps`: the share of the
    from-scratch budget used; the large model costs the same per step either
    way) and, with `flops_per_step`, `"budget_flops"`.

    Args:
        scratch_steps: int, steps of the from-scratch recipe for the large model.
        schedule: a `LemonSchedule` (training stops at its `total_steps`), or
            None with `stop_steps`.
        stop_steps: int, where to stop when there is no schedule.
        flops_per_step: optional float, training FLOPs per step (e.g.
            `6 * parameters * tokens_per_batch` for a transformer).
    """

    def __init__(self, scratch_steps, schedule=None, stop_steps=None, flops_per_step=None):
        super().__init__()
        if (schedule is None) == (stop_steps is None):
            raise ValueError("Give a LemonSchedule (schedule=) or stop_steps=, exactly one.")
        if schedule is not None and not isinstance(schedule, LemonSchedule):
            raise TypeError(f"schedule must be a LemonSchedule, got {type(schedule).__name__}.")
        self.stop_steps = schedule.total_steps if schedule is not None else int(stop_steps)
        # An optimizer from expand_optimizer counts the source's steps too.
        self.start_step = getattr(schedule, "start_step", 0)
        if not (isinstance(scratch_steps, int) and scratch_steps > 0) or self.stop_steps <= 0:
            raise ValueError(
                f"scratch_steps and the stop step must be positive ints, got "
                f"{scratch_steps!r} and {self.stop_steps!r}."
            )
        self.scratch_steps = scratch_steps
        self.flops_per_step = flops_per_step
        self.steps = 0

    def on_train_begin(self, logs=None):
        self.steps = int(keras.ops.convert_to_numpy(
            self.model.optimizer.iterations)) - self.start_step

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps >= self.stop_steps:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["budget_steps"] = self.steps
        logs["budget_fraction"] = self.steps / self.scratch_steps
        if self.flops_per_step is not None:
            logs["budget_flops"] = self.steps * float(self.flops_per_step)


class LosslessCheck(keras.callbacks.Callback):
    """At train begin, checks that the model still computes its source's outputs.

    Compares `max |model(x) - source(x)| / max |source(x)|` on a probe batch,
    in inference mode, and raises a `ValueError` above `tolerance`. The
    measured error is logged as `"lossless_error"` at the first epoch end.

    Args:
        source: the small model the training model was expanded from.
        probe: a batch of inputs both models accept.
        tolerance: float; default 1e-5 for a source computing in float32,
            else its compute dtype's `keras_lemon.lossless.TOLERANCES` entry
            (bfloat16 0.125, float16 0.0156).
    """

    def __init__(self, source, probe, tolerance=None):
        super().__init__()
        self.source = source
        self.probe = probe
        if tolerance is None:
            tolerance, dtype = dtype_tolerance(source)
            tolerance = 1e-5 if dtype in ("float32", "float64") else tolerance
        self.tolerance = tolerance
        self.error = None

    def on_train_begin(self, logs=None):
        error = output_error(self.source, self.model, self.probe)
        self.error = error
        if not error <= self.tolerance:
            raise ValueError(
                f"LosslessCheck: before training, the model differs from its source "
                f"by {error:.3g} (max |diff| / max |output|) > {self.tolerance:g}. "
                "Something changed its weights between expansion and training."
            )

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.error is not None:
            logs["lossless_error"] = self.error


class SymmetryMonitor(keras.callbacks.Callback):
    """Logs how far the copies of duplicated units have drifted apart.

    For every `Dense` layer of the model that has a counterpart with the same
    path and fewer units in `source` (its units were copied circularly:
    unit `j` copies source unit `j mod d`), computes the cosine distance
    between the incoming weights of each copy and those of the unit it
    copies, averaged over copies and layers. Right after a LEMON expansion it
    is 0 (copies start identical); it grows as training breaks the symmetry.
    Logged as `"symmetry_distance"` at each epoch end.

    Args:
        source: the source model (for the layer widths).
    """

    def __init__(self, source):
        super().__init__()
        self.source_units = {
            layer.path: layer.units for layer in source._flatten_layers()
            if isinstance(layer, keras.layers.Dense)
        }
        self.history = []

    def distance(self):
        """The current mean cosine distance between copies (None if no copies)."""
        distances = []
        for layer in self.model._flatten_layers():
            source_units = self.source_units.get(getattr(layer, "path", None))
            if not isinstance(layer, keras.layers.Dense) or source_units is None \
                    or layer.units < 2 * source_units:
                continue
            kernel = keras.ops.convert_to_numpy(layer.kernel).astype("float64")
            copies = layer.units // source_units
            original = kernel[:, :source_units]
            for c in range(1, copies):
                copy = kernel[:, c * source_units:(c + 1) * source_units]
                cosine = np.sum(original * copy, axis=0) / np.maximum(
                    np.linalg.norm(original, axis=0) * np.linalg.norm(copy, axis=0), 1e-30)
                distances.append(np.mean(1.0 - cosine))
        return float(np.mean(distances)) if distances else None

    def on_epoch_end(self, epoch, logs=None):
        value = self.distance()
        self.history.append(value)
        if logs is not None and value is not None:
            logs["symmetry_distance"] = value
