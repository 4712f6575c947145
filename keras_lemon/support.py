"""Which models keras_lemon can expand, and the one place that says so.

`graph_adapter` is the single entry for every model: users' functional and
subclassed models and keras-hub backbones and tasks alike are traced and
their roles inferred (`keras_lemon.adapters.keras_models`). keras-hub classes known
not to be expandable exactly are refused up front with their reason
(`CLASS_REFUSALS`); anything else that goes wrong while analysing a keras-hub
model becomes a `ValueError` naming the class instead of an error from deep
inside Keras.
"""

import contextlib

import keras
import keras_hub
import numpy as np

from keras_lemon.index_maps import DimExpansion
from keras_lemon.lossless import PROBE_SENTENCES
from keras_lemon.lossless import check_lossless
from keras_lemon.adapters.keras_models import KerasModelAdapter
from keras_lemon.adapters.keras_models import is_keras_hub_model
from keras_lemon.adapters.keras_models import is_keras_model
from keras_lemon.rules.registry import ExpansionError

_CNN = ("a convolutional network: keras_lemon grows transformers (a residual stream, "
        "attention heads, feed-forward layers); channel widths that change from stage to "
        "stage have no lossless LEMON rule")
_COMPOSITE = ("it combines several models (encoders, decoders or heads of different "
              "widths) in one backbone; keras_lemon grows one residual stream")
_ENCODER_DECODER = ("an encoder-decoder with cross-attention and a KV cache: not supported "
                    "yet (keras_lemon grows encoders; the decoder issue comes next)")
_DECODER = ("a decoder LLM whose attention keeps a KV cache (keras-hub "
            "CachedMultiHeadAttention or a rotary attention layer): not supported yet, "
            "no expansion rule covers its attention and RMSNorm layers")
_MOE = ("a mixture of experts: its router reads the residual stream, and a wider "
        "stream changes which experts are chosen unless the router grows too; "
        "not supported")
_ROTARY = ("its attention layer applies rotary position embeddings inside a custom "
           "attention layer that has no expansion rule yet")

#: keras-hub backbone class name -> why it cannot be expanded (exactly) yet.
CLASS_REFUSALS = {
    "BASNetBackbone": _COMPOSITE,
    "BLIP2Backbone": _COMPOSITE,
    "BartBackbone": _ENCODER_DECODER,
    "BloomBackbone": _DECODER,
    "CLIPBackbone": _COMPOSITE,
    "CSPNetBackbone": _CNN,
    "DFineBackbone": _COMPOSITE,
    "DINOV3Backbone": _ROTARY,
    "DeepLabV3Backbone": _COMPOSITE,
    "DenseNetBackbone": _CNN,
    "DepthAnythingBackbone": _COMPOSITE,
    "ESM2Backbone": _ROTARY,
    "ESMBackbone": _ROTARY,
    "EdRecBackbone": _ENCODER_DECODER,
    "EfficientNetBackbone": _CNN,
    "FNetBackbone": ("FNet mixes features with an FFT over the hidden axis: a wider "
                     "hidden axis changes every Fourier coefficient, so no expansion "
                     "is exact"),
    "FalconBackbone": _DECODER,
    "FeaturePyramidBackbone": _CNN,
    "FluxBackbone": ("a diffusion transformer whose blocks are modulated by a timestep "
                     "embedding (adaptive LayerNorm) and use rotary attention: not supported"),
    "Gemma3nBackbone": _DECODER,
    "Gemma4Backbone": _DECODER,
    "GptOssBackbone": _MOE,
    "HGNetV2Backbone": _CNN,
    "MetaCLIP2Backbone": _COMPOSITE,
    "MiTBackbone": ("a hierarchical vision transformer whose width changes from stage "
                    "to stage (overlapping patch merging, spatial-reduction attention)"),
    "MixtralBackbone": _MOE,
    "MobileNetBackbone": _CNN,
    "MobileNetV5Backbone": _CNN,
    "MoonshineBackbone": _ENCODER_DECODER,
    "PARSeqBackbone": _COMPOSITE,
    "PaliGemmaBackbone": _COMPOSITE,
    "Qwen3MoeBackbone": _MOE,
    "Qwen3_5Backbone": _DECODER,
    "Qwen3_5MoeBackbone": _MOE,
    "QwenMoeBackbone": _MOE,
    "RWKV7Backbone": ("a linear-attention RNN (RWKV time mixing with per-channel decay): "
                      "not a transformer with attention heads"),
    "ResNetBackbone": _CNN,
    "RetinaNetBackbone": _COMPOSITE,
    "SAM3PromptableConceptBackbone": _COMPOSITE,
    "SAMBackbone": _COMPOSITE,
    "SegFormerBackbone": _COMPOSITE,
    "SigLIPBackbone": _COMPOSITE,
    "StableDiffusion3Backbone": _COMPOSITE,
    "SwinTransformerBackbone": ("window attention with per-head relative position bias "
                                "tables, and patch merging that changes the width between "
                                "stages"),
    "T5Backbone": _ENCODER_DECODER,
    "T5Gemma2Backbone": _ENCODER_DECODER,
    "T5GemmaBackbone": _ENCODER_DECODER,
    "VGGBackbone": _CNN,
    "ViTDetBackbone": ("windowed attention with relative position embeddings sized to "
                       "the head size, and a convolutional neck"),
    "VideoPrismBackbone": ("a factorized space-time encoder (two transformer stacks over "
                           "different axes): not supported yet"),
    "WhisperBackbone": _ENCODER_DECODER,
    "XceptionBackbone": _CNN,
    "XLNetBackbone": ("its two-stream relative attention (XLNetRelativeAttention) has no "
                      "expansion rule"),
}


def supported_summary():
    """One sentence listing what is supported, for error messages."""
    return ("supported: BertBackbone, RobertaBackbone, XLMRobertaBackbone, "
            "DistilBertBackbone, DebertaV3Backbone, RoformerV2Backbone (and their MaskedLM "
            "and TextClassifier tasks), ElectraBackbone, ViTBackbone and DeiTBackbone (and "
            "their ImageClassifier tasks), DINOV2Backbone, the CLIP, MetaCLIP2 and SigLIP "
            "vision and text encoders, the decoders LlamaBackbone, Llama3Backbone, "
            "MistralBackbone, QwenBackbone, Qwen2Backbone, Qwen3Backbone, Phi3Backbone, "
            "SmolLM3Backbone, GemmaBackbone (Gemma and Gemma 2), Gemma3Backbone (text), "
            "GPT2Backbone, GPTNeoXBackbone and "
            "OPTBackbone (and their CausalLM tasks), and in width only AlbertBackbone; your own functional "
            "or subclassed transformers (see the README's census table)")


def refusal(model):
    """The reason `model`'s class cannot be expanded, or None.

    The nearest keras-hub class of the backbone decides (a user's subclass
    of `LlamaBackbone` is a Llama; `DINOV2Backbone`, a subclass of the
    refused `FeaturePyramidBackbone`, is judged as itself).
    """
    backbone = getattr(model, "backbone", model)
    if getattr(backbone, "vision_encoder", None) is not None:
        # Gemma 3 and other multimodal backbones: a vision tower of its own width.
        return f"it holds a vision encoder beside its text decoder: {_COMPOSITE}"
    return _class_refusal(type(backbone))


def _class_refusal(backbone_class):
    for cls in backbone_class.__mro__:
        if cls.__module__.startswith("keras_hub"):
            return CLASS_REFUSALS.get(cls.__name__)
    return None


def check_supported(model):
    """Raises the `ValueError` for a model that cannot be expanded at all."""
    if not is_keras_model(model):
        raise ValueError(
            f"expand_model does not support {type(model).__name__} "
            f"('{getattr(model, 'name', model)}'): pass a keras.Model (functional "
            f"or subclassed) or a keras-hub model; {supported_summary()}."
        )
    reason = refusal(model)
    if reason is not None:
        raise ExpansionError(
            f"{type(model).__name__} '{model.name}' cannot be expanded: {reason}. "
            f"{_supported_sentence()}"
        )


#: What Keras or a model's own code raises from deep inside a trace or rebuild.
_DEEP_ERRORS = (ValueError, TypeError, AttributeError, NotImplementedError, KeyError,
                IndexError, ZeroDivisionError)


@contextlib.contextmanager
def explaining(model):
    """Re-raises errors from deep inside the analysis of a keras-hub model.

    They become an `ExpansionError` that names the class and says what is
    supported. Our own `ExpansionError`s get the model's class and name in
    front when they lack them (a layer rule names only its layer); other
    errors for users' own models (whose code the user can read) pass
    unchanged.
    """
    try:
        yield
    except _DEEP_ERRORS as error:
        if isinstance(error, ExpansionError):
            if f"'{model.name}'" in str(error):
                raise
            # A layer's rule names the layer; say which model it belongs to.
            raise ExpansionError(f"{type(model).__name__} '{model.name}': {error}") from error
        if not is_keras_hub_model(model):
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ExpansionError(
            f"{type(model).__name__} '{model.name}': keras_lemon could not analyse this "
            f"model's graph ({type(error).__name__}: {first_line[:200]}); no exact "
            f"expansion is known for it. {_supported_sentence()}"
        ) from error


def graph_adapter(model, config_keys=None, sample_inputs=None):
    """A `KerasModelAdapter` for `model`, or the `ValueError` that says why not."""
    check_supported(model)
    with explaining(model):
        return KerasModelAdapter(model, config_keys, sample_inputs)


class GraphFamily:
    """What the preset path needs of a keras-hub backbone on the general path.

    Its sizes, probe batch and lossless check, answered from the traced graph. `tasks` holds keras-hub's task classes for the backbone (those
    the census does not list as expanding raise their reason when expanded).

    Args:
        backbone_class: the keras-hub backbone class.
    """

    def __init__(self, backbone_class):
        self.backbone_class = backbone_class
        self.name = f"{backbone_class.__name__} (general path)"
        self.tasks = {cls: None for cls in _subclasses(keras_hub.models.Task)
                      if getattr(cls, "backbone_cls", None) is backbone_class}

    def sizes(self, backbone):
        return graph_adapter(backbone).transformer_sizes()

    def probe_inputs(self, model, tokenizer=None, seed=0):
        """Random inputs; with a tokenizer, `PROBE_SENTENCES` for the token inputs."""
        adapter = graph_adapter(model)
        inputs = adapter.probe_inputs(seed)
        if not self._reads_text(inputs, tokenizer):
            return inputs
        length = adapter.probe_length()
        start = _first_attribute(tokenizer, ("start_token_id", "cls_token_id"))
        end = _first_attribute(tokenizer, ("end_token_id", "sep_token_id"))
        pad = _first_attribute(tokenizer, ("pad_token_id",)) or 0
        rows = []
        for sentence in PROBE_SENTENCES:
            ids = list(np.asarray(keras.ops.convert_to_numpy(tokenizer(sentence))).reshape(-1))
            ids = ([start] if start is not None else []) + ids
            rows.append(ids[: length - 1] + ([end] if end is not None else []))
        token_ids = np.full((len(rows), length), pad, "int32")
        padding_mask = np.zeros((len(rows), length), "int32")
        for i, row in enumerate(rows):
            token_ids[i, : len(row)], padding_mask[i, : len(row)] = row, 1
        text = {"token_ids": token_ids, "padding_mask": padding_mask}
        if "segment_ids" in inputs:
            text["segment_ids"] = np.zeros_like(token_ids)
        if "mask_positions" in inputs:  # a masked LM: predict the first few tokens
            count = np.shape(inputs["mask_positions"])[1]
            positions = np.arange(1, count + 1, dtype="int32") % length
            text["mask_positions"] = np.tile(positions, (len(rows), 1))
        return text

    @staticmethod
    def _reads_text(inputs, tokenizer):
        return tokenizer is not None and isinstance(inputs, dict) \
            and set(inputs) <= {"token_ids", "padding_mask", "segment_ids", "mask_positions"} \
            and {"token_ids", "padding_mask"} <= set(inputs)

    def probe_description(self, tokenizer=None, model=None):
        """What `probe_inputs(model, tokenizer)` feeds, in words."""
        if model is not None and self._reads_text(graph_adapter(model).probe_inputs(), tokenizer):
            return (f"{len(PROBE_SENTENCES)} English sentences "
                    "(keras_lemon.lossless.PROBE_SENTENCES)")
        return ("2 random inputs (seed 0): token ids with the second sequence padded, "
                "or images of standard normal pixels")

    def verify(self, source, model, inputs, tolerance=None):
        """Max |diff| / max |output| of `model` against `source`; raises above `tolerance`.

        `tolerance=None` is the source's compute dtype's
        (`keras_lemon.lossless.dtype_tolerance`).

        The hidden states grow: post-LN as circular copies, pre-LN with the
        final LayerNorm's zero extras.
        """
        adapter = graph_adapter(source)
        name = f"{type(source).__name__} '{source.name}'"
        if isinstance(source, keras_hub.models.Task):  # logits keep their size
            return check_lossless(source, model, inputs, tolerance, name)
        pattern = "circular" if adapter.roles.post_ln else "zero"
        dim = DimExpansion(adapter.roles.hidden, self.sizes(model).hidden, pattern)
        return check_lossless(source, model, inputs, tolerance, name, dim.expand)


def _first_attribute(obj, names):
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return int(value)
    return None


def _subclasses(cls):
    found = []
    for sub in cls.__subclasses__():
        found.extend([sub, *_subclasses(sub)])
    return found


def family_for_class(backbone_class):
    """The `GraphFamily` of a keras-hub backbone class.

    Raises:
        ValueError: for a class refused by `CLASS_REFUSALS`, with its reason.
    """
    reason = _class_refusal(backbone_class)
    if reason is not None:
        raise ExpansionError(
            f"{backbone_class.__name__} cannot be expanded: {reason}. "
            f"{_supported_sentence()}")
    return GraphFamily(backbone_class)


def _supported_sentence():
    summary = supported_summary()
    return f"{summary[0].upper()}{summary[1:]}."
