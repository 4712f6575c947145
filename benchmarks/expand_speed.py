"""Expansion time and peak memory vs building the target model from scratch.

For each backend and model, two fresh processes:

- `scratch`: build the target model from its config (random initialization);
- `expand`: build the source, then `keras_lemon.expand_model` it to the
  target size (timed: the expansion call alone, without the probe-batch
  lossless check, `verify=False`, which is a forward pass of both models).

Each prints wall time and peak RSS (`ru_maxrss`); RSS is also reported above
the process's RSS after importing the frameworks (`import` baseline). Ratios:
expansion time / scratch time (target <= 1.0) and peak RSS above baseline /
(source + target fp32 bytes) (target <= 1.5).

Sizes (the issue asks BERT 12x768 -> 24x1024; post-LN BERT can only grow to
a multiple of its width, so BERT goes to the nearest exact size, 24x1536; ViT
is pre-LN and goes exactly base -> large, 12x768 -> 24x1024):

    python benchmarks/expand_speed.py                # all backends, both models
    python benchmarks/expand_speed.py --quick        # small sizes, a smoke run
    python benchmarks/expand_speed.py --backends jax --models bert
    python benchmarks/expand_speed.py --models llama_depth,llama_width

Llama-3.2-1B-shaped (issue 14): 16 x 2048, 32 query / 8 KV heads of 64,
intermediate 8192, a 32k vocabulary, tied (~1.0B parameters, 4.2 GB fp32),
to 32 layers (~2.0B) and to 1.5x width (3072, 48 / 12 heads; ~2.3B).

Rows already in `results/expand_speed.json` are kept (`--again` measures
them anew), so a run stopped midway resumes with what is missing.
"""

import argparse
import json
import os
import subprocess
import sys

LLAMA_1B = dict(vocabulary_size=32000, num_layers=16, num_query_heads=32, num_key_value_heads=8,
                hidden_dim=2048, intermediate_dim=8192, tie_word_embeddings=True)
LLAMA_QUICK = dict(vocabulary_size=1000, num_layers=2, num_query_heads=4, num_key_value_heads=2,
                   hidden_dim=64, intermediate_dim=256, tie_word_embeddings=True)
MODELS = {
    # name: (class, source config, target sizes)
    "bert": ("BertBackbone",
             dict(vocabulary_size=30522, num_layers=12, num_heads=12, hidden_dim=768,
                  intermediate_dim=3072, max_sequence_length=512),
             dict(layers=24, hidden=1536)),
    "vit": ("ViTBackbone",
            dict(image_shape=(224, 224, 3), patch_size=16, num_layers=12, num_heads=12,
                 hidden_dim=768, mlp_dim=3072),
            dict(layers=24, hidden=1024)),
    # The general path (traced, rebuilt from config): RoBERTa-base -> 24 x 1536.
    "roberta": ("RobertaBackbone",
                dict(vocabulary_size=50265, num_layers=12, num_heads=12, hidden_dim=768,
                     intermediate_dim=3072, max_sequence_length=512),
                dict(layers=24, hidden=1536)),
    # Llama-3.2-1B-shaped (32k vocabulary, random weights; ~1.0B parameters):
    # to 32 layers (~2.0B) and to 1.5x width, 48 / 12 heads of 64 (~2.3B).
    "llama_depth": ("LlamaBackbone", LLAMA_1B, dict(layers=32, hidden=2048)),
    "llama_width": ("LlamaBackbone", LLAMA_1B, dict(layers=16, hidden=3072)),
}
QUICK = {
    "bert": ("BertBackbone",
             dict(vocabulary_size=1000, num_layers=2, num_heads=2, hidden_dim=64,
                  intermediate_dim=256, max_sequence_length=64),
             dict(layers=4, hidden=128)),
    "vit": ("ViTBackbone",
            dict(image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2,
                 hidden_dim=64, mlp_dim=256),
            dict(layers=4, hidden=96)),
    "roberta": ("RobertaBackbone",
                dict(vocabulary_size=1000, num_layers=2, num_heads=2, hidden_dim=64,
                     intermediate_dim=256, max_sequence_length=64),
                dict(layers=4, hidden=128)),
    "llama_depth": ("LlamaBackbone", LLAMA_QUICK, dict(layers=4, hidden=64)),
    "llama_width": ("LlamaBackbone", LLAMA_QUICK, dict(layers=2, hidden=96)),
}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "expand_speed.json")


def child(spec):
    """Runs in a fresh process: one measurement, printed as JSON."""
    import resource
    import time

    import keras_hub

    import keras_lemon

    def rss_mb():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024

    cls = getattr(keras_hub.models, spec["class"])
    baseline = rss_mb()
    if spec["mode"] == "scratch":
        plan = None
        start = time.perf_counter()
        model = cls(**spec["target_config"])
        elapsed = time.perf_counter() - start
    else:
        source = cls(**spec["source_config"])
        start = time.perf_counter()
        model = keras_lemon.expand_model(source, seed=0, verify=False, **spec["target"])
        elapsed = time.perf_counter() - start
        plan = source.count_params()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(dict(seconds=elapsed, peak_mb=peak, baseline_mb=baseline,
                                      target_params=model.count_params(), source_params=plan)))


def run(backend, mode, name, table):
    cls, source_config, target = table[name]
    target_config = dict(source_config)
    grow = target["hidden"] / source_config["hidden_dim"]
    target_config.update(num_layers=target["layers"], hidden_dim=target["hidden"])
    # Heads grow with the width (their size stays); KV heads keep the groups.
    for heads in ("num_heads", "num_query_heads", "num_key_value_heads"):
        if heads in source_config:
            target_config[heads] = round(source_config[heads] * grow)
    key = "intermediate_dim" if "intermediate_dim" in source_config else "mlp_dim"
    target_config[key] = source_config[key] * target["hidden"] // source_config["hidden_dim"]
    spec = dict(mode=mode, source_config=source_config, target_config=target_config,
                target=target, **{"class": cls})
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                         env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.split("RESULT ", 1)[1])


def main():
    parser = argparse.ArgumentParser(description="expand_model speed/memory vs scratch")
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--models", default="bert,vit,roberta,llama_depth,llama_width")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--again", action="store_true",
                        help="measure again the rows already in results/expand_speed.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    table = QUICK if args.quick else MODELS
    header = ("backend", "model", "params src->tgt", "scratch s", "expand s", "time ratio",
              "peak MB (scratch)", "peak MB (expand)", "expand above import MB",
              "fp32 src+tgt MB", "RSS ratio")
    print(" | ".join(header))
    # Rows already measured are kept and skipped (a run may span sessions).
    rows = []
    if not args.quick and os.path.exists(RESULTS):
        with open(RESULTS) as f:
            rows = json.load(f)
    for backend in args.backends.split(","):
        for name in args.models.split(","):
            done = [r for r in rows if (r["backend"], r["model"]) == (backend, name)]
            if done and not args.again:
                print(" | ".join(done[0].values()), "(kept)", flush=True)
                continue
            rows = [r for r in rows if (r["backend"], r["model"]) != (backend, name)]
            scratch = run(backend, "scratch", name, table)
            expand = run(backend, "expand", name, table)
            fp32_mb = (expand["source_params"] + expand["target_params"]) * 4 / 2**20
            above = expand["peak_mb"] - expand["baseline_mb"]
            row = (backend, name,
                   f"{expand['source_params'] / 1e6:.0f}M->{expand['target_params'] / 1e6:.0f}M",
                   f"{scratch['seconds']:.1f}", f"{expand['seconds']:.1f}",
                   f"{expand['seconds'] / scratch['seconds']:.2f}",
                   f"{scratch['peak_mb']:.0f}", f"{expand['peak_mb']:.0f}", f"{above:.0f}",
                   f"{fp32_mb:.0f}", f"{above / fp32_mb:.2f}")
            print(" | ".join(row), flush=True)
            rows.append(dict(zip(header, row)))
            if not args.quick:  # every finished row is kept, for the README table
                os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
                with open(RESULTS, "w") as f:
                    json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
