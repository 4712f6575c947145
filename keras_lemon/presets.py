"""`expand_preset`: a larger keras-hub preset on disk, from a preset on disk.

Reads any preset keras-hub reads (a Keras preset saved with
`save_to_preset`, a Hugging Face-format directory that keras-hub's converters
read, or, with internet, a hub name), expands the model with `expand_model`,
and writes a Keras preset that `Backbone.from_preset` and the task class's
`from_preset` load on any backend. The expansion is recorded in the preset's
`metadata.json` under `"keras_lemon"`.
"""

import datetime
import json
import os
import shutil
import tempfile

import keras
import keras_hub
import numpy as np
from keras_hub.src.utils import preset_utils

try:  # keras-hub reads Hugging Face weights with safetensors, when installed
    from safetensors import SafetensorError
except ImportError:  # pragma: no cover
    class SafetensorError(Exception):
        """Stands in for safetensors' error when it is not installed."""

from keras_lemon.adapters.keras_models import with_missing_arguments
from keras_lemon.expand import expand_model
from keras_lemon.gguf import gguf_to_hf_directory
from keras_lemon.lossless import dtype_tolerance
from keras_lemon.options import expansion_options
from keras_lemon.support import family_for_class
from keras_lemon.version import __version__

METADATA_KEY = "keras_lemon"

# Preprocessing saved beside the model in a Keras preset: config file ->
# what it holds. None of it depends on the model's width or depth.
_PREPROCESSING_FILES = (
    preset_utils.PREPROCESSOR_CONFIG_FILE,
    preset_utils.TOKENIZER_CONFIG_FILE,
    preset_utils.IMAGE_CONVERTER_CONFIG_FILE,
    preset_utils.AUDIO_CONVERTER_CONFIG_FILE,
)
# Files of a Hugging Face tokenizer (keras-hub converts any of them).
_HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


def _with_hf_epsilon(model, preset):
    """`model` with the norm epsilon of its Hugging Face `config.json`.

    keras-hub 0.32's Llama converter ignores `rms_norm_eps` (its models get
    1e-6; SmolLM2 uses 1e-5), so the loaded model would not be the
    checkpoint's. The backbone is rebuilt with the epsilon the checkpoint
    states and its weights copied over.
    """
    hf_config = preset_utils.load_json(preset, preset_utils.CONFIG_FILE)
    epsilon = hf_config.get("rms_norm_eps", hf_config.get("layer_norm_eps"))
    config = model.get_config()
    if not isinstance(epsilon, (int, float)) or not isinstance(
            config.get("layer_norm_epsilon"), float) or config["layer_norm_epsilon"] == epsilon:
        return model
    config = with_missing_arguments(model, config)
    config["layer_norm_epsilon"] = float(epsilon)
    rebuilt = type(model).from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


class LoadedPreset:
    """A preset's model and preprocessing, as keras-hub loads them.

    Attributes:
        preset: the preset as given.
        format: `"keras"`, `"transformers"` (Hugging Face) or `"gguf"`.
        model: the task (a Keras preset with `task.json`) or the backbone.
        preprocessing: dict config file -> preprocessing layer saved beside
            the model (tokenizer, preprocessor, image converter), not those
            inside the task.
        dtype: the dtype policy the model was loaded in: the one a Keras
            preset was saved in (keras-hub alone would load a bfloat16
            preset in float32), or None (Hugging Face and GGUF files: as
            keras-hub loads them).
    """

    def __init__(self, preset, load_weights=True):
        self.preset = preset
        if preset.endswith(".gguf") and os.path.isfile(preset):
            # A llama.cpp checkpoint: read through a Hugging Face directory.
            self._gguf_directory = tempfile.TemporaryDirectory(prefix="lemon-gguf-")
            preset = gguf_to_hf_directory(preset, self._gguf_directory.name)
        elif "://" not in preset and (os.sep in preset or preset.startswith(".")) \
                and not os.path.isdir(preset):
            raise ValueError(f"Preset directory '{preset}' does not exist.")
        self._load(preset, load_weights)

    def _load(self, preset, load_weights):
        try:
            loader = preset_utils.get_preset_loader(preset)
            backbone_cls = loader.check_backbone_class()
        except json.JSONDecodeError as error:
            raise ValueError(
                f"Preset '{preset}': {preset_utils.CONFIG_FILE} is not valid JSON ({error})."
            ) from error
        self.format = "keras" if isinstance(loader, preset_utils.KerasPresetLoader) \
            else type(loader).__name__.replace("PresetLoader", "").lower()
        if self.preset != preset:
            self.format = "gguf"
        try:
            self.family = family_for_class(backbone_cls)
        except ValueError as error:
            raise ValueError(f"Preset '{preset}': {error}") from error
        self.preprocessing = {}
        self.dtype = None
        if self.format == "keras":
            self.dtype = _saved_float_policy(preset)
            self.model = self._load_keras(preset, backbone_cls, load_weights)
        else:
            try:
                self.model = _with_hf_epsilon(
                    backbone_cls.from_preset(preset, load_weights=load_weights), preset)
            except SafetensorError as error:
                raise ValueError(
                    f"Preset '{preset}': its safetensors weights cannot be read ({error}); "
                    "is model.safetensors complete (not truncated by a download)?"
                ) from error
            converter = getattr(loader, "converter", None)
            if hasattr(converter, "convert_tokenizer") and any(
                preset_utils.check_file_exists(preset, f) for f in _HF_TOKENIZER_FILES
            ):
                self.preprocessing[preset_utils.TOKENIZER_CONFIG_FILE] = \
                    keras_hub.models.Tokenizer.from_preset(preset)
            if hasattr(converter, "load_image_converter_config"):
                image_converter = keras_hub.layers.ImageConverter.from_preset(preset)
                if image_converter is not None:
                    self.preprocessing[preset_utils.IMAGE_CONVERTER_CONFIG_FILE] = image_converter

    def _load_keras(self, preset, backbone_cls, load_weights):
        has_task = preset_utils.check_file_exists(preset, preset_utils.TASK_CONFIG_FILE)
        if has_task:
            task_cls = _config_class(preset, preset_utils.TASK_CONFIG_FILE)
            if task_cls not in self.family.tasks:
                raise ValueError(
                    f"Preset '{preset}' holds a {task_cls.__name__}; keras_lemon "
                    f"expands the {backbone_cls.__name__} tasks "
                    + ", ".join(c.__name__ for c in self.family.tasks)
                    + ". Load its backbone with keras_hub.models.Backbone.from_preset "
                    "and use keras_lemon.expand_model."
                )
            model = task_cls.from_preset(preset, load_weights=load_weights, dtype=self.dtype)
        else:
            model = backbone_cls.from_preset(preset, load_weights=load_weights,
                                             dtype=self.dtype)
        for config_file in _PREPROCESSING_FILES:
            if config_file == preset_utils.PREPROCESSOR_CONFIG_FILE and has_task:
                continue  # the task saves its own preprocessor
            if preset_utils.check_file_exists(preset, config_file):
                cls = _config_class(preset, config_file)
                self.preprocessing[config_file] = cls.from_preset(preset)
        return model

    @property
    def tokenizer(self):
        """The preset's tokenizer (of its task's preprocessor or standalone), or None."""
        candidates = [getattr(getattr(self.model, "preprocessor", None), "tokenizer", None)]
        for layer in self.preprocessing.values():
            candidates.append(layer if isinstance(layer, keras_hub.tokenizers.Tokenizer)
                              else getattr(layer, "tokenizer", None))
        return next((t for t in candidates if t is not None), None)

    def save(self, model, directory):
        """Saves `model` with this preset's preprocessing as a Keras preset.

        The backbone's `config.json` also gets the constructor arguments its
        `get_config()` forgets (keras-hub 0.32's Llama drops
        `tie_word_embeddings`: a tied model would reload untied and fail).
        """
        model.save_to_preset(directory)
        _add_forgotten_arguments(getattr(model, "backbone", model), directory)
        for config_file, layer in self.preprocessing.items():
            if not os.path.exists(os.path.join(directory, config_file)):
                layer.save_to_preset(directory)


def _add_forgotten_arguments(backbone, directory):
    path = os.path.join(directory, preset_utils.CONFIG_FILE)
    with open(path) as f:
        saved = json.load(f)
    config = saved.get("config", {})
    missing = {k: v for k, v in with_missing_arguments(backbone, config).items()
               if k not in config}
    if missing:
        saved["config"] = {**config, **missing}
        with open(path, "w") as f:
            json.dump(saved, f, indent=4)


def _saved_float_policy(preset):
    """The name of the float dtype policy a Keras preset's backbone was saved in, or None."""
    dtype = preset_utils.load_json(preset, preset_utils.CONFIG_FILE).get("config", {}).get("dtype")
    name = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
    if isinstance(name, str) and name in ("float32", "float16", "bfloat16", "float64",
                                          "mixed_float16", "mixed_bfloat16"):
        return name
    return None


def _config_class(preset, config_file):
    try:
        config = preset_utils.load_json(preset, config_file)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"Preset '{preset}': {config_file} is not valid JSON ({error})."
        ) from error
    return preset_utils.check_config_class(config)


def _local_path(preset):
    return os.path.abspath(preset) if os.path.isdir(preset) else None


def check_destination(src, dst, overwrite):
    """Raises a `ValueError` unless `dst` may receive the expansion of `src`."""
    if _local_path(src) is not None and os.path.abspath(dst) == _local_path(src):
        raise ValueError(
            f"dst '{dst}' is the source preset: expand_preset never modifies its "
            "source; choose another directory."
        )
    if os.path.isfile(dst):
        raise ValueError(f"dst '{dst}' is a file; expand_preset writes a preset directory.")
    if os.path.isdir(dst) and os.listdir(dst) and not overwrite:
        raise ValueError(
            f"dst '{dst}' exists and is not empty; pass overwrite=True (CLI: "
            "--overwrite) to replace it."
        )
    # The preset is staged beside dst: its nearest existing parent must take
    # a new directory, or the whole expansion would run to fail at the end.
    parent = os.path.dirname(os.path.abspath(dst))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    try:  # os.access says yes to root even on /proc: try what staging will do
        os.rmdir(tempfile.mkdtemp(prefix=".lemon-write-check-", dir=parent))
    except OSError as error:
        raise ValueError(
            f"dst '{dst}' cannot be written: '{parent}' is not a writable directory "
            f"({error.strerror}); choose a destination you can create."
        ) from error


def read_expansion(preset):
    """The expansion record `expand_preset` wrote into a preset's metadata.

    Args:
        preset: a preset directory.

    Returns:
        dict (source, sizes, method, seed, measured lossless error, ...),
        or None when the preset was not written by `expand_preset`.
    """
    path = os.path.join(preset, preset_utils.METADATA_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f).get(METADATA_KEY)


def _write_record(directory, record):
    path = os.path.join(directory, preset_utils.METADATA_FILE)
    with open(path) as f:
        metadata = json.load(f)
    metadata[METADATA_KEY] = record
    with open(path, "w") as f:
        f.write(json.dumps(metadata, indent=4))


def expand_preset(src, dst, *, hidden=None, layers=None, heads=None,
                  intermediate=None, placement="interleave", method="lemon",
                  seed=None, noise_scale=1.0, overwrite=False, verify=True,
                  tolerance=None, progress=None, exact=True, positions=None):
    """Expands a keras-hub preset into a larger preset, losslessly.

    Loads the preset (its task with head and preprocessor when it has one,
    else its backbone and the tokenizer or image converter saved beside it),
    expands it with `expand_model`, writes a Keras preset into a temporary
    directory beside `dst`, reloads it with keras-hub, measures the reloaded
    model's outputs against the source's on a probe batch (real English
    sentences for text presets with a tokenizer), records the expansion in
    `metadata.json` and only then renames the temporary directory to `dst`.
    On any error nothing is left at `dst`. A Keras preset saved in bfloat16
    or float16 is loaded, expanded, written and checked in its own dtype
    (keras-hub's `from_preset` alone would load it in float32).

    Args:
        src: a preset directory: a Keras preset (`save_to_preset`) or a
            Hugging Face-format directory keras-hub converts
            (`config.json` with `model_type`, `model.safetensors`, and
            `vocab.txt` for the tokenizer); a llama.cpp `.gguf` file of a
            Llama-architecture model (read by `keras_lemon.gguf`,
            dequantized to float32); or a keras-hub preset name or
            `hf://` / `kaggle://` handle (downloads, needs internet).
        dst: the directory to write. Must not exist, or be empty, unless
            `overwrite=True`.
        hidden, layers, heads, intermediate, placement, method, seed,
            noise_scale, positions: as `expand_model`. The seed used (drawn
            when None) and the noise scale are recorded.
        overwrite: replace a non-empty `dst` (only after success).
        verify: reload the written preset and measure the lossless error;
            raise above `tolerance`. With False the metadata records no error.
        tolerance: float, the largest accepted max |diff| / max |output|;
            None for the source's compute dtype's
            (`keras_lemon.lossless.dtype_tolerance`: 1e-4 in float32,
            0.125 in bfloat16). The tolerance used and the dtype it was
            judged at are recorded.
        progress: optional `progress(done, total, path)` callable, see
            `expand_model`.
        exact: as `expand_model`. With False a post-LN width that is not a
            multiple is written as the best approximation: its error is
            measured on the reloaded preset and recorded as
            `approximation_error` (with `"exact": false` and no
            `lossless_error`), never checked against `tolerance`.

    Returns:
        The expanded model (task or backbone, in memory).

    Raises:
        ValueError: for a missing or unsupported preset, an existing `dst`,
            or an invalid expansion (see `expand_model`).
        keras_lemon.ExpansionError: when the written preset is not lossless.

    Example:

    >>> import os, tempfile, keras_hub
    >>> tmp = tempfile.mkdtemp()
    >>> keras_hub.models.BertBackbone(vocabulary_size=100, num_layers=2,
    ...     num_heads=2, hidden_dim=32, intermediate_dim=64,
    ...     ).save_to_preset(os.path.join(tmp, "small"))
    >>> big = expand_preset(os.path.join(tmp, "small"), os.path.join(tmp, "big"),
    ...                     hidden=64, layers=4, seed=0)
    >>> keras_hub.models.BertBackbone.from_preset(os.path.join(tmp, "big")).num_layers
    4
    >>> read_expansion(os.path.join(tmp, "big"))["target_sizes"]["hidden"]
    64

    References:
        Wang et al., "LEMON: Lossless model expansion", ICLR 2024,
        arXiv:2310.07999.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    check_destination(src, dst, overwrite)  # before the (slow) load; again before writing
    model, _ = write_expanded_preset(
        LoadedPreset(src), dst, hidden=hidden, layers=layers, heads=heads,
        intermediate=intermediate, placement=placement, method=method, seed=seed,
        noise_scale=noise_scale, overwrite=overwrite, verify=verify, tolerance=tolerance,
        progress=progress, exact=exact, positions=positions,
    )
    return model


def write_expanded_preset(loaded, dst, *, hidden=None, layers=None, heads=None,
                          intermediate=None, placement="interleave", method="lemon",
                          seed=None, noise_scale=1.0, overwrite=False, verify=True,
                          tolerance=None, progress=None, exact=True, positions=None):
    """`expand_preset` on an already loaded `LoadedPreset` (the CLI plans first).

    Returns:
        `(model, record)`: the expanded model and the expansion record
        written into the preset's metadata.
    """
    check_destination(loaded.preset, dst, overwrite)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**32))
    source, family = loaded.model, loaded.family
    probe = family.probe_inputs(source, loaded.tokenizer)
    model = expand_model(source, hidden=hidden, layers=layers, heads=heads,
                         intermediate=intermediate, placement=placement,
                         method=method, seed=seed, noise_scale=noise_scale,
                         verify=False, progress=progress, exact=exact, positions=positions)
    source_sizes = family.sizes(getattr(source, "backbone", source))
    target_sizes = family.sizes(getattr(model, "backbone", model))
    inexact = not exact and target_sizes.hidden % source_sizes.hidden != 0 \
        and expansion_options(source).post_ln
    parent = os.path.dirname(os.path.abspath(dst))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.lemon-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0o700 is not what a user expects of dst
    try:
        loaded.save(model, staging)
        error = None
        default_tolerance, compute_dtype = dtype_tolerance(source)
        tolerance = default_tolerance if tolerance is None else tolerance
        if verify:
            reloaded = type(model).from_preset(staging, dtype=loaded.dtype)
            error = family.verify(source, reloaded, probe, np.inf if inexact else tolerance)
            del reloaded
        record = {
            "keras_lemon_version": __version__,
            "source": _local_path(loaded.preset) or loaded.preset,
            "source_format": loaded.format,
            "model_class": type(model).__name__,
            "source_sizes": source_sizes.as_dict(),
            "target_sizes": target_sizes.as_dict(),
            "exact": not inexact,
            "method": method,
            "placement": placement if positions is None else f"positions {list(positions)}",
            "seed": seed,
            "noise_scale": float(noise_scale),
            "lossless_error": None if inexact else error,
            "approximation_error": error if inexact else None,
            "tolerance": tolerance,
            "compute_dtype": compute_dtype,
            "probe": family.probe_description(loaded.tokenizer, source),
            "backend": keras.backend.backend(),
            "date": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        }
        _write_record(staging, record)
        _replace_directory(staging, dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return model, record


def _replace_directory(staging, dst):
    """Renames `staging` to `dst`, replacing an existing `dst` only at the end."""
    if not os.path.exists(dst):
        os.rename(staging, dst)
        return
    old = staging + ".old"
    os.rename(dst, old)
    try:
        os.rename(staging, dst)
    except BaseException:
        os.rename(old, dst)
        raise
    shutil.rmtree(old)
