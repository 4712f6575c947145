"""Layout maps for expanding and training under `keras.distribution` (JAX).

`expand_model` called inside a distribution's `scope()` builds the expanded
model there: each variable is created with the layout the distribution gives
its path and receives its computed value shard by shard (`jax.device_put`
from the host array; see `keras_lemon.deferred`). The expansion's math runs
in NumPy on the host, one variable at a time, so the host holds the source's
weights as it reads them and one target variable, never the whole target.

keras-hub ships layout maps for its decoders (`LlamaBackbone.get_layout_map`,
Gemma, Qwen); `get_layout_map` returns those, and its own for the BERT- and
ViT-style encoders keras-hub has none for.

Example:

```python
import keras, keras_hub, keras_lemon

mesh = keras.distribution.DeviceMesh(
    (2, 4), ("batch", "model"), keras.distribution.list_devices())
layout_map = keras_lemon.distribution.get_layout_map(
    keras_hub.models.LlamaBackbone, mesh)
distribution = keras.distribution.ModelParallel(
    layout_map=layout_map, batch_dim_name="batch")
with distribution.scope():
    big = keras_lemon.expand_model(small, hidden=4096, layers=64, seed=0)
    big.compile(...)
    big.fit(...)
```

On several hosts, every host runs the same program (after
`keras.distribution.initialize()`) with the same `seed`: the NumPy math gives
every host the same values, and each places its own devices' shards.
"""

import keras
import keras_hub

#: Megatron-style sharding of the BERT-style encoder blocks, as keras-hub's
#: decoder maps do: the fan-out axis of the attention projections and the
#: first FFN matrix on the model axis, the fan-in axis of the attention
#: output and the second FFN matrix on it; the other axis on the data axis
#: (fully sharded data parallel). Norms, biases and small tables replicate.
#: Keys are regular expressions a variable's whole path must match
#: (`LayoutMap` uses `re.fullmatch`; `_PREFIX` admits enclosing layers).
_PREFIX = "(.*/)?"
_ENCODER_PATTERNS = {
    "bert": {
        "token_embedding/embeddings": ("model", "data"),
        r"transformer_layer_\d+/self_attention_layer/(query|key|value)/kernel":
            ("model", "data", None),
        r"transformer_layer_\d+/self_attention_layer/attention_output/kernel":
            ("model", None, "data"),
        r"transformer_layer_\d+/feedforward_intermediate_dense/kernel": ("data", "model"),
        r"transformer_layer_\d+/feedforward_output_dense/kernel": ("model", "data"),
    },
    "vit": {
        r"transformer_block_\d+/mha/(query|key|value)/kernel": ("model", "data", None),
        r"transformer_block_\d+/mha/attention_output/kernel": ("model", None, "data"),
        r"transformer_block_\d+/mlp/dense_1/kernel": ("data", "model"),
        r"transformer_block_\d+/mlp/dense_2/kernel": ("model", "data"),
    },
}


def _encoder_family(backbone_class):
    if issubclass(backbone_class, keras_hub.models.BertBackbone):
        return "bert"
    if issubclass(backbone_class, keras_hub.models.ViTBackbone):
        return "vit"
    return None


def get_layout_map(model, device_mesh, model_parallel_dim_name="model",
                   data_parallel_dim_name="batch"):
    """A `keras.distribution.LayoutMap` for a keras-hub model, expanded or not.

    Args:
        model: a keras-hub backbone or task, or its class.
        device_mesh: a `keras.distribution.DeviceMesh` with both axes.
        model_parallel_dim_name: the mesh axis the weights are split on.
        data_parallel_dim_name: the mesh axis the batch is split on (the
            weights' other axis too, as keras-hub's maps do).

    Returns:
        The backbone class's own `get_layout_map` (keras-hub's decoders:
        Llama, Llama 3, Qwen, Gemma, ...), or keras_lemon's for
        `BertBackbone` and `ViTBackbone` (keras-hub has none). The split
        axes must divide by their mesh axes' sizes.

    Raises:
        ValueError: for other models, or axes missing from the mesh.

    Example:

    >>> import keras, keras_hub
    >>> mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"), ["cpu:0"])
    >>> layout_map = get_layout_map(keras_hub.models.BertBackbone, mesh)
    >>> layout_map["transformer_layer_7/feedforward_output_dense/kernel"].axes
    ('model', 'batch')
    """
    cls = model if isinstance(model, type) else type(model)
    if issubclass(cls, keras_hub.models.Task):
        cls = model.backbone_cls if isinstance(model, type) else type(model.backbone)
    if cls is None:
        raise ValueError(f"{model.__name__} names no backbone class; pass the backbone class.")
    for name in (model_parallel_dim_name, data_parallel_dim_name):
        if name not in device_mesh.axis_names:
            raise ValueError(
                f"get_layout_map: the device mesh has axes {device_mesh.axis_names}, "
                f"not '{name}'; pass model_parallel_dim_name= and data_parallel_dim_name=.")
    if hasattr(cls, "get_layout_map"):  # keras-hub's own (its Backbone base has none)
        return cls.get_layout_map(device_mesh, model_parallel_dim_name=model_parallel_dim_name,
                                  data_parallel_dim_name=data_parallel_dim_name)
    family = _encoder_family(cls)
    if family is None:
        raise ValueError(
            f"get_layout_map: {cls.__name__} has no layout map in keras-hub and none in "
            "keras_lemon (which has BertBackbone and ViTBackbone). Write a "
            "keras.distribution.LayoutMap for its variable paths, or use "
            "keras.distribution.DataParallel.")
    axis = {"model": model_parallel_dim_name, "data": data_parallel_dim_name, None: None}
    layout_map = keras.distribution.LayoutMap(device_mesh)
    for pattern, axes in _ENCODER_PATTERNS[family].items():
        layout_map[_PREFIX + pattern] = tuple(axis[a] for a in axes)
    return layout_map
