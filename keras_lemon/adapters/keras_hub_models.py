"""Adapters for keras-hub BERT and ViT backbones and their task models.

An adapter knows one model family: which config keys hold the sizes, whether
it is pre-LN or post-LN, how to build the target from the config, and which
layer of the target each source layer feeds (including the depth map). The
per-layer math is in `keras_lemon.rules`.
"""

import dataclasses

import keras
import keras_hub
import numpy as np

from keras_lemon import deferred
from keras_lemon.index_maps import DimExpansion
from keras_lemon.lossless import PROBE_SENTENCES
from keras_lemon.lossless import check_lossless
from keras_lemon.rules.core_layers import normalized_dim
from keras_lemon.sizes import TransformerSizes


def _sub(model, attribute):
    return None if model is None else getattr(model, attribute)


def _layer(model, name):
    return None if model is None else model.get_layer(name)


@dataclasses.dataclass(frozen=True)
class KerasHubFamily:
    """One keras-hub model family (backbone class plus the tasks we know)."""

    name: str
    backbone_class: type
    size_keys: dict  # TransformerSizes field -> config key
    stream_pattern: str  # "average" (pre-LN) or "circular" (post-LN)
    expand_backbone: object  # fn(session, source, target, dims, depth)
    tasks: dict  # task class -> fn(session, source_task, target_task, dims)
    make_probe: object  # fn(model, rng, tokenizer) -> a batch of inputs
    probe_kind: str  # "tokens" or "images"
    # How the backbone's outputs (hidden states) grow: "circular" copies
    # (post-LN), or "zero" extras (pre-LN: the final LayerNorm's extra gammas
    # and betas are zero).
    output_pattern: str
    scaled_epsilon_key: str = None  # config key of a LayerNorm epsilon to scale

    @property
    def post_ln(self):
        return self.stream_pattern == "circular"

    def sizes(self, backbone):
        config = backbone.get_config()
        return TransformerSizes(**{f: config[k] for f, k in self.size_keys.items()})

    def build_and_expand(self, session, model, target_sizes, dims, depth):
        """Builds a model of `type(model)` at `target_sizes` and writes its weights.

        The backbone (nearly all weights) is built without random
        initialization (`keras_lemon.deferred`) and its variables are
        initialized straight from the rules; then the task, whose constructor
        compiles and so needs real variables, is built around it.
        """
        is_task = isinstance(model, keras_hub.models.Task)
        backbone = model.backbone if is_task else model
        config = backbone.get_config()
        config.update({k: getattr(target_sizes, f) for f, k in self.size_keys.items()})
        if self.scaled_epsilon_key:
            config[self.scaled_epsilon_key] *= dims["stream"].variance_ratio
        try:
            with deferred.deferred_initialization():
                new_backbone = type(backbone).from_config(config)
            session.expect(len(new_backbone.weights))
            self.expand_backbone(session, backbone, new_backbone, dims, depth)
        finally:
            deferred.finish()
        if not is_task:
            return new_backbone
        task_config = model.get_config()
        # The preprocessor does not depend on the width or depth: share it, as
        # keras-hub does when one preprocessor is passed to several tasks.
        task_config.update(backbone=new_backbone, preprocessor=model.preprocessor)
        new_model = type(model).from_config(task_config)
        session.expect(len(new_model.weights) - len(new_backbone.weights))
        self.tasks[type(model)](session, model, new_model, dims)
        return new_model

    def probe_inputs(self, model, tokenizer=None, seed=0):
        """A batch for the lossless check: real sentences when a tokenizer is given."""
        return self.make_probe(model, np.random.default_rng(seed), tokenizer)

    def probe_description(self, tokenizer=None, model=None):
        """What `probe_inputs` feeds, in words (recorded in expanded presets)."""
        if self.probe_kind == "images":
            return "2 images of standard normal pixels (seed 0)"
        if tokenizer is None:
            return "2 sequences of random token ids, one padded (seed 0)"
        return f"{len(PROBE_SENTENCES)} English sentences (keras_lemon.lossless.PROBE_SENTENCES)"

    def verify(self, source, model, inputs, tolerance=1e-4):
        """Max |diff| / max |output| of `model` against `source`; raises above `tolerance`.

        A backbone's outputs grow with the model: the source's are expanded
        with `output_pattern` before comparing. Task outputs (logits) keep
        their size.
        """
        expected_from_source = None
        if not isinstance(source, keras_hub.models.Task):
            dim = DimExpansion(self.sizes(source).hidden, self.sizes(model).hidden,
                               self.output_pattern)
            expected_from_source = dim.expand
        return check_lossless(source, model, inputs, tolerance,
                              f"{type(source).__name__} '{source.name}'", expected_from_source)

    def expand(self, session, source, target, dims, depth):
        if isinstance(source, keras_hub.models.Task):
            self.expand_backbone(session, source.backbone, _sub(target, "backbone"), dims, depth)
            self.tasks[type(source)](session, source, target, dims)
        else:
            self.expand_backbone(session, source, target, dims, depth)


def _expand_bert_backbone(session, source, target, dims, depth):
    stream = dims["stream"]
    for name in ("token_embedding", "position_embedding", "segment_embedding"):
        session.expand_layer(_sub(source, name), _sub(target, name), name, {**dims, "output": stream})
    session.expand_layer(
        source.embeddings_layer_norm, _sub(target, "embeddings_layer_norm"),
        "embeddings_layer_norm", {**dims, "input": stream},
    )
    for t, spec in enumerate(depth):
        carried = None if spec.output_norm_from is None else source.transformer_layers[spec.output_norm_from]
        session.expand_layer(
            source.transformer_layers[spec.template],
            None if target is None else target.transformer_layers[t],
            f"transformer_layer_{t}", dims,
            {"block": spec, "output_norm_layer": carried},
        )
    # pooled_output = tanh(dense(x[:, 0])): circular in, circular out.
    session.expand_layer(
        source.pooled_dense, _sub(target, "pooled_dense"), "pooled_dense",
        {**dims, "input": stream, "output": stream},
    )


def _expand_bert_masked_lm(session, source, target, dims):
    session.expand_layer(source.masked_lm_head, _sub(target, "masked_lm_head"), "mlm_head", dims)


def _expand_bert_text_classifier(session, source, target, dims):
    classes = DimExpansion(source.num_classes, source.num_classes)
    session.expand_layer(
        source.output_dense, _sub(target, "output_dense"), source.output_dense.name,
        {**dims, "input": dims["stream"], "output": classes},
    )


def _bert_probe(model, rng, tokenizer=None, length=32):
    """Token ids, segment ids and a padding mask (the second row padded).

    With a tokenizer, `PROBE_SENTENCES` as `[CLS] sentence [SEP]`; else
    random ids. `BertMaskedLM` also gets `mask_positions`.
    """
    backbone = getattr(model, "backbone", model)
    length = min(length, backbone.max_sequence_length)
    rows = []
    if tokenizer is None:
        for n in (length, (3 * length) // 4):
            rows.append(rng.integers(1, backbone.vocabulary_size, n))
        pad = 0
    else:
        for sentence in PROBE_SENTENCES:
            ids = np.asarray(keras.ops.convert_to_numpy(tokenizer(sentence))).reshape(-1)
            rows.append(np.concatenate([[tokenizer.cls_token_id], ids[: length - 2],
                                        [tokenizer.sep_token_id]]))
        pad = tokenizer.pad_token_id
    token_ids = np.full((len(rows), length), pad, "int32")
    padding_mask = np.zeros((len(rows), length), "int32")
    for i, row in enumerate(rows):
        token_ids[i, : len(row)] = row
        padding_mask[i, : len(row)] = 1
    inputs = {
        "token_ids": token_ids,
        "segment_ids": ((np.arange(length) >= length // 2) * padding_mask).astype("int32"),
        "padding_mask": padding_mask,
    }
    if isinstance(model, keras_hub.models.BertMaskedLM):
        inputs["mask_positions"] = np.tile(np.arange(1, 4, dtype="int32"), (len(rows), 1))
    return inputs


def _vit_probe(model, rng, tokenizer=None):
    backbone = getattr(model, "backbone", model)
    return rng.normal(size=(2, *backbone.image_shape)).astype("float32")


def _expand_vit_backbone(session, source, target, dims, depth):
    stream = dims["stream"]
    for name, flags in (("vit_patching_and_embedding", None), ("vit_encoder", {"depth": depth})):
        session.expand_layer(source.get_layer(name), _layer(target, name), name,
                             {**dims, "input": stream, "output": stream}, flags)


def _expand_vit_image_classifier(session, source, target, dims):
    # Token pooling and average pooling over tokens both keep the pattern of
    # the final LayerNorm's output.
    features = normalized_dim(dims["stream"])
    if source.intermediate_dim is not None:
        width = DimExpansion(source.intermediate_dim, source.intermediate_dim)
        session.expand_layer(
            source.intermediate_layer, _sub(target, "intermediate_layer"), "pre_logits",
            {**dims, "input": features, "output": width},
        )
        features = width
    classes = DimExpansion(source.num_classes, source.num_classes)
    session.expand_layer(
        source.output_dense, _sub(target, "output_dense"), "predictions",
        {**dims, "input": features, "output": classes},
    )


BERT = KerasHubFamily(
    name="BERT (post-LN)",
    backbone_class=keras_hub.models.BertBackbone,
    size_keys={"layers": "num_layers", "hidden": "hidden_dim", "heads": "num_heads",
               "intermediate": "intermediate_dim"},
    stream_pattern="circular",
    expand_backbone=_expand_bert_backbone,
    tasks={
        keras_hub.models.BertMaskedLM: _expand_bert_masked_lm,
        keras_hub.models.BertTextClassifier: _expand_bert_text_classifier,
    },
    make_probe=_bert_probe,
    probe_kind="tokens",
    output_pattern="circular",
)

VIT = KerasHubFamily(
    name="ViT (pre-LN)",
    backbone_class=keras_hub.models.ViTBackbone,
    size_keys={"layers": "num_layers", "hidden": "hidden_dim", "heads": "num_heads",
               "intermediate": "mlp_dim"},
    stream_pattern="average",
    expand_backbone=_expand_vit_backbone,
    tasks={keras_hub.models.ViTImageClassifier: _expand_vit_image_classifier},
    make_probe=_vit_probe,
    probe_kind="images",
    output_pattern="zero",
    scaled_epsilon_key="layer_norm_epsilon",
)

FAMILIES = (BERT, VIT)


def family_for_class(cls):
    """The `KerasHubFamily` whose backbone or task class is `cls`, or None."""
    for family in FAMILIES:
        if cls is family.backbone_class or cls in family.tasks:
            return family
    return None


def find_family(model):
    """The `KerasHubFamily` of a keras-hub model, or None."""
    return family_for_class(type(model))


def supported_classes():
    return [c.__name__ for f in FAMILIES for c in (f.backbone_class, *f.tasks)]
