"""The text tasks' shared corpus: Debian documentation, WordPiece tokens.

`replicate_bert.py` (masked LM) and `replicate_llama.py` (causal LM) read the
same paragraphs with the same vocabulary and the same held-out split.
"""

import keras_hub
import numpy as np
import tensorflow as tf

import _data

SPECIAL_TOKENS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]


def log_softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of integer `labels` under `logits` (last axis)."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=-1))
    picked = np.take_along_axis(shifted, labels[..., None], axis=-1)[..., 0]
    return float(np.mean(log_norm - picked))


class DocsCorpus:
    """English prose from Debian's documentation packages, tokenized.

    A WordPiece vocabulary (keras-hub's trainer) is learned from the first
    4M characters (0.5M with `quick`; the whole corpus would take minutes);
    2% of the paragraphs, chosen by content hash, are held out.
    """

    def __init__(self, quick=False):
        paragraphs, self.sources = _data.load_english_paragraphs(
            max_chars=1_500_000 if quick else None)
        self.chars = sum(len(p) for p in paragraphs)
        sample, size = [], 0
        for p in paragraphs:
            if size > (500_000 if quick else 4_000_000):
                break
            sample.append(p)
            size += len(p)
        self.vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
            tf.data.Dataset.from_tensor_slices(sample).batch(1000),
            vocabulary_size=2000 if quick else 8192, lowercase=True,
            reserved_tokens=SPECIAL_TOKENS)
        self.tokenizer = keras_hub.tokenizers.BertTokenizer(
            vocabulary=self.vocabulary, lowercase=True)
        held_out = [_data.held_out(p, 0.02) for p in paragraphs]
        self.train_paragraphs = [p for p, h in zip(paragraphs, held_out) if not h]
        self.held_out_paragraphs = [p for p, h in zip(paragraphs, held_out) if h]

    def token_id(self, token):
        return self.tokenizer.token_to_id(token)

    def rows(self, paragraphs, body):
        """Token ids of consecutive paragraphs, each ended by `[SEP]`, cut into
        rows of `body` tokens."""
        sep_id = self.token_id("[SEP]")
        stream = []
        for start in range(0, len(paragraphs), 5000):
            for ids in self.tokenizer(paragraphs[start:start + 5000]):
                stream.extend(np.asarray(ids).tolist())
                stream.append(sep_id)
        return np.asarray(stream[:len(stream) // body * body], np.int32).reshape(-1, body)

    def describe(self):
        used = ", ".join(f"`{package}` {files} files / {chars / 1e6:.1f}M chars"
                         for package, (files, chars) in self.sources.items())
        return (f"English prose from Debian documentation ({used}; markup, code "
                f"blocks and tables stripped), {self.chars / 1e6:.1f}M characters. "
                f"WordPiece vocabulary of {len(self.vocabulary)} tokens learned with "
                f"keras-hub's `compute_word_piece_vocabulary`")
