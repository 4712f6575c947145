"""Adapters for keras-hub BERT and ViT backbones and their task models.

An adapter knows one model family: which config keys hold the sizes, whether
it is pre-LN or post-LN, how to build the target from the config, and which
layer of the target each source layer feeds (including the depth map). The
per-layer math is in `keras_lemon.rules`.
"""

import dataclasses

import keras_hub

from keras_lemon import deferred
from keras_lemon.index_maps import DimExpansion
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
        self.tasks[type(model)](session, model, new_model, dims)
        return new_model

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
)

VIT = KerasHubFamily(
    name="ViT (pre-LN)",
    backbone_class=keras_hub.models.ViTBackbone,
    size_keys={"layers": "num_layers", "hidden": "hidden_dim", "heads": "num_heads",
               "intermediate": "mlp_dim"},
    stream_pattern="average",
    expand_backbone=_expand_vit_backbone,
    tasks={keras_hub.models.ViTImageClassifier: _expand_vit_image_classifier},
    scaled_epsilon_key="layer_norm_epsilon",
)

FAMILIES = (BERT, VIT)


def find_family(model):
    """The `KerasHubFamily` of a keras-hub model, or None."""
    for family in FAMILIES:
        if type(model) is family.backbone_class or type(model) in family.tasks:
            return family
    return None


def supported_classes():
    return [c.__name__ for f in FAMILIES for c in (f.backbone_class, *f.tasks)]
