"""LEMON on a decoder: Llama 2x64 -> 4x128, causal LM on Debian docs.

The paper grows encoders (ViT, BERT); our users grow decoder LLMs. Here a
2-layer, 64-wide Llama-style model (keras-hub `LlamaCausalLM`: RMSNorm,
rotary grouped-query attention, SwiGLU) is trained on the same English
prose as `replicate_bert.py`, expanded to 4 layers x 128 (query heads 4 -> 8,
key/value heads 2 -> 4, head size 16 kept) and trained with LEMON's
compressed schedule. Language-model loss curves are smooth and do not
saturate at this scale. See `_replication.py` for the protocol.

Usage:
    KERAS_BACKEND=jax python benchmarks/replicate_llama.py [--quick] [--out DIR]
"""

import keras
import keras_hub
import numpy as np

import _replication
import _text

#: T = S = 2400 steps of 32 sequences of 64 tokens.
FULL_STEPS = 2400


class DocsLlama(_replication.Task):
    name = "llama"
    title = "Llama-style causal LM on Debian documentation"
    metric = "held-out LM loss"
    higher_is_better = False
    seq_len = 64

    def __init__(self, quick=False, steps=None):
        self.corpus = _text.DocsCorpus(quick)
        # Rows of seq_len + 1 tokens: inputs and next-token labels.
        self.train_sequences = self.corpus.rows(self.corpus.train_paragraphs, self.seq_len + 1)
        held_out = self.corpus.rows(self.corpus.held_out_paragraphs, self.seq_len + 1)
        self.eval_sequences = held_out[:64 if quick else 512]
        common = dict(vocabulary_size=len(self.corpus.vocabulary), dropout=0.0)
        self.small = dict(num_layers=2, hidden_dim=64, num_query_heads=4,
                          num_key_value_heads=2, intermediate_dim=256, **common)
        self.large = dict(num_layers=4, hidden_dim=128, num_query_heads=8,
                          num_key_value_heads=4, intermediate_dim=512, **common)
        self.expand_sizes = dict(hidden=128, layers=4, heads=8, intermediate=512)
        warmup = self.set_budget(quick, steps, full_steps=FULL_STEPS)
        # A small-LM recipe: AdamW, cosine to 0.1 x peak.
        self.recipe = _replication.Recipe(
            peak_learning_rate=1e-3, warmup_steps=warmup, alpha=0.1,
            weight_decay=0.01, batch_size=32)

    def data_settings(self):
        return dict(chars=self.corpus.chars, vocabulary=len(self.corpus.vocabulary),
                    train=len(self.train_sequences), held_out=len(self.eval_sequences))

    def build(self, sizes):
        return keras_hub.models.LlamaCausalLM(
            backbone=keras_hub.models.LlamaBackbone(**sizes), preprocessor=None)

    def loss(self):
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @staticmethod
    def _split(rows):
        x = {"token_ids": rows[:, :-1], "padding_mask": np.ones_like(rows[:, :-1], bool)}
        return x, rows[:, 1:]

    def batches(self, seed):
        rng = np.random.default_rng(seed)
        size = self.recipe.batch_size
        while True:
            order = rng.permutation(len(self.train_sequences))
            for start in range(0, len(order) - size + 1, size):
                yield self._split(self.train_sequences[order[start:start + size]])

    def evaluate(self, model):
        x, labels = self._split(self.eval_sequences)
        total = 0.0
        for start in range(0, len(labels), 64):  # 64 x 64 x vocab logits at a time
            chunk = {k: v[start:start + 64] for k, v in x.items()}
            logits = keras.ops.convert_to_numpy(model.predict_on_batch(chunk))
            total += _text.log_softmax_cross_entropy(
                logits, labels[start:start + 64]) * len(logits)
        return total / len(labels)

    def flops_per_step(self, sizes):
        hidden, heads = sizes["hidden_dim"], sizes["num_query_heads"]
        kv = hidden // heads * sizes["num_key_value_heads"]
        tokens = self.recipe.batch_size * self.seq_len
        # Per token and block: q and o (2 h^2), k and v (2 h kv), the gated
        # FFN (3 h i) and the scores and mix (2 s h) multiply-accumulates.
        macs = sizes["num_layers"] * (2 * hidden * hidden + 2 * hidden * kv
                                      + 3 * hidden * sizes["intermediate_dim"]
                                      + 2 * self.seq_len * hidden)
        macs += hidden * sizes["vocabulary_size"]  # the LM head, every token
        return 3.0 * 2.0 * tokens * macs

    def describe(self):
        r = self.recipe
        keys = ("num_layers", "hidden_dim", "num_query_heads", "num_key_value_heads",
                "intermediate_dim")
        return [
            f"- Data: {self.corpus.describe()}. {len(self.train_sequences)} training "
            f"rows of {self.seq_len} + 1 tokens (paragraphs packed, `[SEP]` between "
            f"them); held-out next-token loss on {len(self.eval_sequences)} rows from "
            f"2% of the paragraphs (split by content hash).",
            f"- Models: keras-hub `LlamaCausalLM` (untied embeddings), no dropout. "
            f"Small {({k: self.small[k] for k in keys})}; large "
            f"{({k: self.large[k] for k in keys})}.",
            f"- Recipe: AdamW (weight decay {r.weight_decay}, not on biases and norms; "
            f"clipnorm 1), batch {r.batch_size}, warmup {r.warmup_steps} steps to "
            f"{r.peak_learning_rate:g}, cosine to {r.alpha:g} x peak. The small model "
            f"trains S = {self.small_steps} steps, scratch T = {self.steps}. LEMON and "
            f"the baselines keep the warmup and the peak and end the cosine at f x T "
            f"(`LemonSchedule.from_schedule`); LEMON's noise scale {self.noise_scale:g}.",
        ]


def main(argv=None):
    args = _replication.parse_args(__doc__.splitlines()[0], argv)
    task = DocsLlama(quick=args.quick, steps=args.steps)
    fractions = args.fractions or ((0.5,) if args.quick else _replication.FRACTIONS)
    return _replication.main(task, args, fractions)


if __name__ == "__main__":
    main()
