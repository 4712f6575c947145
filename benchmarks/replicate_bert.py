"""LEMON's BERT result in miniature: BERT 2x64 -> 4x128, masked LM on Debian docs.

The paper grows BERT(6, 384) to BERT(12, 768) with masked-LM pretraining on
Wikipedia and saves 33.2% of the from-scratch training compute. Here a
2-layer, 64-wide BERT is pretrained on English prose from Debian's
documentation packages (Linux kernel and Python docs, Vim help), expanded to
4 layers x 128 and trained with LEMON's compressed schedule; see
`_replication.py` for the protocol and `benchmarks/README.md` for the command
that installs the data and runs it.

Usage:
    KERAS_BACKEND=jax python benchmarks/replicate_bert.py [--quick] [--out DIR]
"""

import keras
import keras_hub
import numpy as np

import _replication
import _text

#: T = S = 2400 steps of 32 sequences of 64 tokens.
FULL_STEPS = 2400


class DocsBERT(_replication.Task):
    name = "bert"
    title = "BERT masked LM on Debian documentation"
    metric = "held-out MLM loss"
    higher_is_better = False
    seq_len = 64
    masked_per_sequence = 10  # ~15% of the 62 maskable positions, as in BERT
    # LEMON's code scales the symmetry-breaking draws of post-LN BERT by 0.1.
    noise_scale = 0.1

    def __init__(self, quick=False, steps=None):
        self.corpus = _text.DocsCorpus(quick)
        self.vocabulary = self.corpus.vocabulary
        self.tokenizer = self.corpus.tokenizer
        self.train_sequences = self._pack(self.corpus.train_paragraphs)
        eval_sequences = self._pack(self.corpus.held_out_paragraphs)
        eval_sequences = eval_sequences[:128 if quick else 1024]
        # The held-out batch is masked once, so every evaluation sees the same task.
        self.eval_batch = self._mask(eval_sequences, np.random.default_rng(12345))

        vocab = len(self.vocabulary)
        common = dict(vocabulary_size=vocab, max_sequence_length=self.seq_len, dropout=0.0)
        self.small = dict(num_layers=2, hidden_dim=64, num_heads=2, intermediate_dim=256,
                          **common)
        self.large = dict(num_layers=4, hidden_dim=128, num_heads=4, intermediate_dim=512,
                          **common)
        self.expand_sizes = dict(hidden=128, layers=4, intermediate=512)
        warmup = self.set_budget(quick, steps, full_steps=FULL_STEPS)
        # BERT's recipe (AdamW, cosine to 0.1 x peak) with a peak for small models.
        self.recipe = _replication.Recipe(
            peak_learning_rate=1e-3, warmup_steps=warmup, alpha=0.1,
            weight_decay=0.01, batch_size=32)

    def _pack(self, paragraphs):
        """Token ids of consecutive paragraphs cut into `[CLS] ... [SEP]` rows."""
        cls_id, sep_id = self.corpus.token_id("[CLS]"), self.corpus.token_id("[SEP]")
        rows = self.corpus.rows(paragraphs, self.seq_len - 2)
        return np.concatenate([np.full((len(rows), 1), cls_id, np.int32), rows,
                               np.full((len(rows), 1), sep_id, np.int32)], axis=1)

    def _mask(self, sequences, rng):
        """BERT's masking: of the chosen positions 80% [MASK], 10% random, 10% kept."""
        n = len(sequences)
        positions = np.sort(
            rng.random((n, self.seq_len - 2)).argsort(axis=1)[:, :self.masked_per_sequence] + 1,
            axis=1).astype(np.int32)
        labels = np.take_along_axis(sequences, positions, axis=1)
        token_ids = sequences.copy()
        draw = rng.random(positions.shape)
        replaced = np.where(draw < 0.8, self.tokenizer.token_to_id("[MASK]"),
                            np.where(draw < 0.9, rng.integers(len(_text.SPECIAL_TOKENS),
                                                              len(self.vocabulary),
                                                              positions.shape), labels))
        np.put_along_axis(token_ids, positions, replaced.astype(np.int32), axis=1)
        x = {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids, bool),
             "segment_ids": np.zeros_like(token_ids), "mask_positions": positions}
        return x, labels

    def data_settings(self):
        return dict(chars=self.corpus.chars, vocabulary=len(self.vocabulary),
                    train=len(self.train_sequences), held_out=len(self.eval_batch[1]))

    def build(self, sizes):
        return keras_hub.models.BertMaskedLM(
            backbone=keras_hub.models.BertBackbone(**sizes), preprocessor=None)

    def loss(self):
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def batches(self, seed):
        rng = np.random.default_rng(seed)
        size = self.recipe.batch_size
        while True:
            order = rng.permutation(len(self.train_sequences))
            for start in range(0, len(order) - size + 1, size):
                yield self._mask(self.train_sequences[order[start:start + size]], rng)

    def evaluate(self, model):
        x, labels = self.eval_batch
        losses = []
        for start in range(0, len(labels), 256):
            chunk = {k: v[start:start + 256] for k, v in x.items()}
            logits = keras.ops.convert_to_numpy(model.predict_on_batch(chunk))
            losses.append(_text.log_softmax_cross_entropy(logits, labels[start:start + 256])
                          * len(logits))
        return sum(losses) / len(labels)

    def flops_per_step(self, sizes):
        hidden = sizes["hidden_dim"]
        tokens = self.recipe.batch_size * self.seq_len
        forward = _replication.encoder_forward_flops(
            tokens, hidden, sizes["num_layers"], sizes["intermediate_dim"], self.seq_len)
        # The MLM head (dense + tied output embedding) runs on masked tokens only.
        masked = self.recipe.batch_size * self.masked_per_sequence
        forward += 2.0 * masked * (hidden * hidden + hidden * sizes["vocabulary_size"])
        return 3.0 * forward

    def describe(self):
        r = self.recipe
        size = {k: v for k, v in self.small.items() if k in ("num_layers", "hidden_dim",
                                                              "num_heads", "intermediate_dim")}
        large = {k: self.large[k] for k in size}
        return [
            f"- Data: {self.corpus.describe()}. "
            f"{len(self.train_sequences)} training sequences of {self.seq_len} tokens "
            f"(paragraphs packed); held-out loss on {len(self.eval_batch[1])} sequences "
            f"from 2% of the paragraphs (split by content hash), masked once.",
            f"- Models: keras-hub `BertMaskedLM`, {self.masked_per_sequence} masked "
            f"positions per sequence (80/10/10), no dropout. Small {size}; large {large}.",
            f"- Recipe: AdamW (weight decay {r.weight_decay}, not on biases and LayerNorm; "
            f"clipnorm 1), batch {r.batch_size}, warmup {r.warmup_steps} steps to "
            f"{r.peak_learning_rate:g}, cosine to {r.alpha:g} x peak. The small model "
            f"trains S = {self.small_steps} steps, scratch T = {self.steps}. LEMON and "
            f"the baselines keep the warmup and the peak and end the cosine at f x T "
            f"(`LemonSchedule.from_schedule`); LEMON's noise scale {self.noise_scale:g} "
            f"(as the paper's code for post-LN BERT).",
        ]


def main(argv=None):
    args = _replication.parse_args(__doc__.splitlines()[0], argv)
    task = DocsBERT(quick=args.quick, steps=args.steps)
    fractions = args.fractions or ((0.5,) if args.quick else _replication.FRACTIONS)
    return _replication.main(task, args, fractions)


if __name__ == "__main__":
    main()
