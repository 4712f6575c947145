"""The census of keras-hub backbones: what `expand_model` does with each class.

Every `keras_hub.models.*Backbone` class is either built tiny from
`census_configs.CONFIGS` (all weights randomized, norm gammas and betas
included), expanded in width and in depth and compared with its source at
`TOLERANCE` on random inputs, or refused by class
(`keras_lemon.support.CLASS_REFUSALS`). The README's table is generated from
this (`python tests/census.py --write-readme`) and `test_census.py` checks it.

Run as a script to print or rewrite the table (one backend per process).
"""

import inspect
import re
import sys
from pathlib import Path

import keras
import keras_hub
import numpy as np
from census_configs import CONFIGS
from conftest import TOLERANCE
from conftest import randomize
from conftest import relative_error

import keras_lemon
from keras_lemon import DimExpansion
from keras_lemon.support import CLASS_REFUSALS

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- census:start -->", "<!-- census:end -->"
#: The requests each built class is checked with: doubling the width is
#: exact for post-LN and pre-LN alike; depth 2 -> 3 inserts one new block.
WIDTH, DEPTH = dict(hidden=32), dict(layers=3)
LENGTH = 11  # sequence length of the random inputs


def backbone_classes():
    """Every public `keras_hub.models.*Backbone` class but the abstract base."""
    return sorted(
        name for name, value in vars(keras_hub.models).items()
        if name.endswith("Backbone") and inspect.isclass(value)
        and value is not keras_hub.models.Backbone
    )


def random_inputs(model, seed=0):
    """Random inputs for each of the model's inputs, by name and dtype."""
    rng = np.random.default_rng(seed)
    config = model.get_config()
    vocab = config.get("vocabulary_size") or config.get("vocab_size") or 2

    def one(tensor):
        shape = tuple(2 if i == 0 else (LENGTH if s is None else s)
                      for i, s in enumerate(tensor.shape))
        name = tensor.name or ""
        if name == "mask_positions":
            return rng.integers(0, LENGTH, shape).astype("int32")  # token positions
        if "mask" in name:
            mask = np.ones(shape, "int32")
            mask[1, shape[1] - 3:] = 0
            return mask
        if "segment" in name:
            return rng.integers(0, 2, shape).astype("int32")
        if "int" in str(tensor.dtype):
            return rng.integers(1, vocab, shape).astype("int32")
        return rng.normal(size=shape).astype("float32")

    return keras.tree.map_structure(one, model._inputs_struct)


def check_request(model, request, tolerance=TOLERANCE):
    """`("yes", error)` when lossless at `tolerance`, `("no", reason)` on a ValueError.

    Raises AssertionError for anything else (another exception, an inexact
    result, a changed source).
    """
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.weights]
    inputs = random_inputs(model)
    try:
        big = keras_lemon.expand_model(model, **{"seed": 0, **request})
    except ValueError as error:
        message = str(error)
        assert type(model).__name__ in message or model.name in message, message
        return "no", message
    finally:
        after = [keras.ops.convert_to_numpy(v) for v in model.weights]
        assert all(np.array_equal(a, b) for a, b in zip(before, after)), "source changed"
    assert type(big) is type(model)
    post_ln = keras_lemon.expansion_options(model).post_ln
    source_hidden = keras_lemon.expansion_options(model).sizes.hidden
    target_hidden = keras_lemon.expansion_options(big).sizes.hidden
    dim = DimExpansion(source_hidden, target_hidden, "circular" if post_ln else "zero")
    expected = keras.tree.flatten(model(inputs, training=False))
    actual = keras.tree.flatten(big(inputs, training=False))
    error = 0.0
    for a, b in zip(expected, actual):
        a = keras.ops.convert_to_numpy(a).astype("float64")
        b = keras.ops.convert_to_numpy(b).astype("float64")
        if a.shape[-1] != b.shape[-1]:
            # Hidden states grow: post-LN as circular copies, pre-LN with
            # the final LayerNorm's zero extras.
            a = dim.expand(a)
        error = max(error, relative_error(a, b))
    assert error <= tolerance, f"{type(model).__name__} {request}: not lossless, {error:.3g}"
    return "yes", error


def task_classes(backbone_name):
    """The keras-hub task classes built on a backbone class (aliases once)."""
    backbone = getattr(keras_hub.models, backbone_name)
    found = {id(v): v for v in vars(keras_hub.models).values()
             if inspect.isclass(v) and issubclass(v, keras_hub.models.Task)
             and getattr(v, "backbone_cls", None) is backbone}
    return sorted(found.values(), key=lambda c: c.__name__)


def _task(task_class, backbone):
    parameters = inspect.signature(task_class.__init__).parameters
    extra = {"num_classes": 3} if "num_classes" in parameters else {}
    if "preprocessor" in parameters:  # Gemma3CausalLM takes it first, without a default
        extra["preprocessor"] = None
    task = task_class(backbone=backbone, **extra)
    return randomize(task, 1)


def census_row(name):
    """`(class, width, depth, tasks, reason)` for one backbone class.

    `tasks` lists the task classes that expand losslessly in width and depth;
    a refused task's reason joins `reason`.
    """
    if name not in CONFIGS:
        return name, "no", "no", "", CLASS_REFUSALS[name]
    model = randomize(getattr(keras_hub.models, name)(**CONFIGS[name]))
    width, width_info = check_request(model, WIDTH)
    depth, depth_info = check_request(model, DEPTH)
    if name in CLASS_REFUSALS:
        for status, info in ((width, width_info), (depth, depth_info)):
            assert status == "no" and CLASS_REFUSALS[name] in info, (name, info)
        return name, "no", "no", "", CLASS_REFUSALS[name]
    reasons = [_short(info) for status, info in ((width, width_info), (depth, depth_info))
               if status == "no"]
    tasks = []
    for task_class in task_classes(name) if "yes" in (width, depth) else []:
        results = [check_request(_task(task_class, getattr(keras_hub.models, name)(
            **CONFIGS[name])), request) for request in (WIDTH, DEPTH)
            if (width if request is WIDTH else depth) == "yes"]
        refused = [info for status, info in results if status == "no"]
        if refused:
            reasons.append(f"{task_class.__name__}: {_short(refused[0])}")
        else:
            tasks.append(task_class.__name__)
    return name, width, depth, ", ".join(tasks), "; ".join(dict.fromkeys(reasons))


def _short(message):
    """The reason in a refusal message, without the model's name."""
    message = re.sub(r"^\S+ '[^']*'(: | cannot be expanded: )", "", message)
    message = re.sub(r"'(\w+?)_\d+'", r"'\1'", message)  # Keras' name counters vary
    return message.split(". Supported:")[0].split(" To fix:")[0].rstrip(".")


def table(rows):
    lines = ["| backbone | width | depth | tasks (expanding as the backbone does) | why not |",
             "|---|---|---|---|---|"]
    lines += [f"| `{name}` | {width} | {depth} | {tasks} | {reason} |"
              for name, width, depth, tasks, reason in rows]
    return "\n".join(lines)


def readme_rows():
    """`{class: (width, depth, tasks)}` as the README's census table states them."""
    text = README.read_text()
    section = text[text.index(START):text.index(END)]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `(\w+)` \| (yes|no) \| (yes|no) \| ([^|]*) \|", line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3), match.group(4).strip())
    return rows


def write_readme(rows):
    text = README.read_text()
    head, rest = text.split(START)
    _, tail = rest.split(END)
    README.write_text(f"{head}{START}\n{table(rows)}\n{END}{tail}")


if __name__ == "__main__":
    rows = [census_row(name) for name in backbone_classes()]
    if "--write-readme" in sys.argv:
        write_readme(rows)
    print(table(rows))
