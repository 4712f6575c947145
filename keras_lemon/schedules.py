"""LEMON's learning-rate schedule: the from-scratch recipe, compressed.

After expansion, LEMON trains the larger model with the *same peak learning
rate* as the from-scratch recipe, but runs the whole schedule (warmup, then
decay to the end value) in a fraction of the from-scratch budget and then
holds the end value. A smaller peak hurts final quality; the uncompressed
schedule wastes the head start the expansion gives.

The schedule, with `s` the step, `w` the warmup steps, `T` the decay steps:

    s < w:          lr = initial + (peak - initial) * s / w
    w <= s < w + T: p = (s - w) / T
                    cosine: lr = end + (peak - end) * (1 + cos(pi p)) / 2
                    linear: lr = end + (peak - end) * (1 - p)
    s >= w + T:     lr = end

with `s` counted from `start_step` (0 unless the optimizer's step count was
carried over from the source model by `keras_lemon.expand_optimizer`).

References:
    Wang et al., "LEMON: Lossless model expansion", ICLR 2024,
    arXiv:2310.07999, section 4.3 and appendix (training recipes).
"""

import math

import keras
from keras import ops

DECAY_SHAPES = ("cosine", "linear")


@keras.saving.register_keras_serializable(package="keras_lemon")
class LemonSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup, cosine or linear decay to an end value, then hold.

    The arguments follow `keras.optimizers.schedules.CosineDecay`, with the
    warmup's end named for what it is, the peak. Build it from a from-scratch
    recipe with `LemonSchedule.from_recipe`, or compress an existing Keras
    schedule with `LemonSchedule.from_schedule`.

    Args:
        peak_learning_rate: float, the learning rate at the end of warmup
            (LEMON keeps the from-scratch recipe's peak).
        decay_steps: int > 0, steps of decay after the warmup.
        warmup_steps: int >= 0, steps of linear warmup.
        initial_learning_rate: float, the learning rate at step 0 (the warmup
            start value; DeiT uses 1e-6).
        decay_shape: `"cosine"` or `"linear"`.
        end_learning_rate: float <= peak, the value held after the decay.
        alpha: float in [0, 1], `end_learning_rate = alpha * peak` (as in
            `CosineDecay`). Give `end_learning_rate` or `alpha`, not both;
            default `alpha=0`.
        start_step: int >= 0, the optimizer step at which the schedule
            begins (before it: the initial value). 0 for a fresh optimizer;
            for one from `keras_lemon.expand_optimizer`, whose step count
            continues the source's, the source's final step count
            (`int(small.optimizer.iterations)`), so that warmup and decay
            run over the expanded model's own steps while Adam's bias
            correction keeps counting the source's.
        name: str.

    Example:

    >>> schedule = LemonSchedule(1e-3, decay_steps=100, warmup_steps=10,
    ...                          alpha=0.01)
    >>> round(float(schedule(10)), 6), round(float(schedule(500)), 6)
    (0.001, 1e-05)
    """

    def __init__(self, peak_learning_rate, decay_steps, warmup_steps=0,
                 initial_learning_rate=0.0, decay_shape="cosine",
                 end_learning_rate=None, alpha=None, start_step=0, name="LemonSchedule"):
        super().__init__()
        if end_learning_rate is not None and alpha is not None:
            raise ValueError("Give end_learning_rate or alpha, not both.")
        _check_count("decay_steps", decay_steps, minimum=1)
        _check_count("warmup_steps", warmup_steps, minimum=0)
        _check_count("start_step", start_step, minimum=0)
        if decay_shape not in DECAY_SHAPES:
            raise ValueError(f"decay_shape must be one of {DECAY_SHAPES}, got {decay_shape!r}.")
        peak = float(peak_learning_rate)
        if not peak > 0:
            raise ValueError(f"peak_learning_rate must be > 0, got {peak_learning_rate}.")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
        end = peak * (alpha or 0.0) if end_learning_rate is None else float(end_learning_rate)
        if end > peak:
            raise ValueError(
                f"end_learning_rate={end} is above peak_learning_rate={peak}; "
                "the schedule decays: choose end <= peak."
            )
        if end < 0 or initial_learning_rate < 0:
            raise ValueError("Learning rates must be >= 0.")
        if initial_learning_rate > peak:
            raise ValueError(
                f"initial_learning_rate={initial_learning_rate} is above the peak "
                f"{peak}; warmup rises to the peak."
            )
        self.peak_learning_rate = peak
        self.decay_steps = int(decay_steps)
        self.warmup_steps = int(warmup_steps)
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_shape = decay_shape
        self.end_learning_rate = end
        self.start_step = int(start_step)
        self.name = name

    @property
    def total_steps(self):
        """Warmup plus decay: the steps (after `start_step`) until the end value is held."""
        return self.warmup_steps + self.decay_steps

    @classmethod
    def from_recipe(cls, peak_learning_rate, total_steps, fraction, warmup_steps=0,
                    initial_learning_rate=0.0, decay_shape="cosine",
                    end_learning_rate=None, alpha=None, start_step=0):
        """The from-scratch recipe compressed to `fraction` of its steps.

        The recipe warms up for `warmup_steps` and decays until
        `total_steps`. The expanded model keeps the warmup and the peak and
        decays until `fraction * total_steps` (LEMON's ViT: 130 of 300
        epochs, `fraction=130/300`).

        Args:
            peak_learning_rate, warmup_steps, initial_learning_rate,
            decay_shape, end_learning_rate, alpha: the recipe's (see the class).
            start_step: where the schedule begins (see the class).
            total_steps: int, the from-scratch budget.
            fraction: float in (0, 1], the part of it the expanded model
                trains for.

        Returns:
            A `LemonSchedule` with `total_steps == round(fraction * total_steps)`.
        """
        _check_count("total_steps", total_steps, minimum=1)
        return cls(
            peak_learning_rate,
            decay_steps=_compressed_decay(total_steps, warmup_steps, fraction),
            warmup_steps=warmup_steps, initial_learning_rate=initial_learning_rate,
            decay_shape=decay_shape, end_learning_rate=end_learning_rate, alpha=alpha,
            start_step=start_step,
        )

    @classmethod
    def from_schedule(cls, schedule, fraction, start_step=0):
        """Compresses an existing Keras schedule to `fraction` of its length.

        Accepts `keras.optimizers.schedules.CosineDecay` (with or without
        warmup), `PolynomialDecay` with `power=1` and `cycle=False` (linear
        decay) and `LemonSchedule`. Peak, warmup and end value are kept.

        Args:
            schedule: the from-scratch schedule.
            fraction: float in (0, 1].
            start_step: where the schedule begins (see the class).

        Returns:
            A `LemonSchedule`.
        """
        schedules = keras.optimizers.schedules
        if isinstance(schedule, LemonSchedule):
            return cls.from_recipe(
                schedule.peak_learning_rate, schedule.total_steps, fraction,
                warmup_steps=schedule.warmup_steps,
                initial_learning_rate=schedule.initial_learning_rate,
                decay_shape=schedule.decay_shape,
                end_learning_rate=schedule.end_learning_rate, start_step=start_step,
            )
        if isinstance(schedule, schedules.CosineDecay):
            warmup = int(schedule.warmup_steps or 0)
            if schedule.warmup_target is None:
                peak, initial, warmup = schedule.initial_learning_rate, 0.0, 0
            else:
                peak, initial = schedule.warmup_target, schedule.initial_learning_rate
            return cls.from_recipe(
                peak, warmup + int(schedule.decay_steps), fraction,
                warmup_steps=warmup, initial_learning_rate=initial,
                decay_shape="cosine", alpha=float(schedule.alpha), start_step=start_step,
            )
        if isinstance(schedule, schedules.PolynomialDecay):
            if float(schedule.power) != 1.0 or schedule.cycle:
                raise ValueError(
                    "Only a linear PolynomialDecay (power=1, cycle=False) can be "
                    f"compressed, got power={schedule.power}, cycle={schedule.cycle}."
                )
            return cls.from_recipe(
                schedule.initial_learning_rate, int(schedule.decay_steps), fraction,
                decay_shape="linear", end_learning_rate=schedule.end_learning_rate,
                start_step=start_step,
            )
        raise TypeError(
            f"from_schedule takes a CosineDecay, a linear PolynomialDecay or a "
            f"LemonSchedule, got {type(schedule).__name__}."
        )

    def __call__(self, step):
        # Pure keras.ops: a Python `if` on `step` would fail inside a compiled
        # train step (jax.jit, tf.function).
        step = ops.maximum(ops.cast(step, "float32") - float(self.start_step), 0.0)
        peak, end = self.peak_learning_rate, self.end_learning_rate
        warmup = float(self.warmup_steps)
        warming = self.initial_learning_rate + (peak - self.initial_learning_rate) * (
            step / max(warmup, 1.0))
        progress = ops.clip((step - warmup) / float(self.decay_steps), 0.0, 1.0)
        if self.decay_shape == "cosine":
            decayed = end + (peak - end) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        else:
            # Written from the end value so that the hold is exactly `end`.
            decayed = end + (peak - end) * (1.0 - progress)
        return ops.where(step < warmup, warming, decayed)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "decay_steps": self.decay_steps,
            "warmup_steps": self.warmup_steps,
            "initial_learning_rate": self.initial_learning_rate,
            "decay_shape": self.decay_shape,
            "end_learning_rate": self.end_learning_rate,
            "start_step": self.start_step,
            "name": self.name,
        }


def _check_count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) and not (
            isinstance(value, float) and value.is_integer()):
        raise TypeError(f"{name} must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")


def _compressed_decay(total_steps, warmup_steps, fraction):
    """Decay steps so that warmup + decay = round(fraction * total_steps)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0.0 < fraction <= 1.0:
        raise ValueError(
            f"fraction must be in (0, 1] (the part of the from-scratch budget "
            f"the expanded model trains for), got {fraction!r}."
        )
    _check_count("warmup_steps", warmup_steps, minimum=0)
    end = round(fraction * total_steps)
    if end <= warmup_steps:
        raise ValueError(
            f"fraction={fraction} of total_steps={total_steps} is {end} steps, "
            f"not more than warmup_steps={warmup_steps}: nothing would be left "
            "for the decay. Use a larger fraction or a shorter warmup."
        )
    return end - warmup_steps
