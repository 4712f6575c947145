"""Expand a small pretrained BERT masked LM (2 x 128) to 4 x 256 with LEMON.

Steps: build and briefly pre-train a small BertMaskedLM on real English text
(Python's docstrings), save it as a local keras-hub preset, load it back with
`from_preset`, print the expansion plan, expand it, measure the max |diff|
of the masked-LM logits on real inputs, fine-tune the expanded model with
`fit` on LEMON's compressed schedule (`LemonSchedule`) with the lossless,
budget and symmetry callbacks, and save it with `save_to_preset`.

Usage: python examples/expand_bert.py [--out DIR] [--preset DIR]
"""

import argparse
import os
import time

import keras
import keras_hub
import numpy as np

import keras_lemon
from _corpus import sentences
from keras_lemon.callbacks import ComputeBudget
from keras_lemon.callbacks import LosslessCheck
from keras_lemon.callbacks import SymmetryMonitor
from keras_lemon.schedules import LemonSchedule

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_source(corpus, out_dir):
    import tensorflow as tf  # keras-hub's tokenizers run on tf.data on every backend

    vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(corpus), vocabulary_size=2000, lowercase=True, reserved_tokens=SPECIAL
    )
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    preprocessor = keras_hub.models.BertMaskedLMPreprocessor(tokenizer, sequence_length=64)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=tokenizer.vocabulary_size(), num_layers=2, num_heads=2,
        hidden_dim=128, intermediate_dim=512, max_sequence_length=64,
    )
    model = keras_hub.models.BertMaskedLM(backbone, preprocessor=preprocessor)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), weighted_metrics=[])
    print("Pre-training the small source model briefly...")
    model.fit(np.array(corpus), batch_size=32, epochs=1, steps_per_epoch=40)
    model.save_to_preset(out_dir)
    return out_dir


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out", help="where presets are written")
    parser.add_argument("--preset", help="an existing local BertMaskedLM preset to expand")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    corpus = sentences()
    print(f"Backend: {keras.backend.backend()}; corpus: {len(corpus)} sentences")

    preset = args.preset or build_source(corpus, os.path.join(args.out, "bert_small"))
    small = keras_hub.models.BertMaskedLM.from_preset(preset)

    plan = keras_lemon.expansion_plan(small, hidden=256, layers=4)
    print(plan)

    start = time.perf_counter()
    big = keras_lemon.expand_model(small, hidden=256, layers=4, seed=0)
    print(f"Expanded {small.count_params():,} -> {big.count_params():,} parameters "
          f"in {time.perf_counter() - start:.1f} s")

    # Real inputs: tokenized, masked sentences (the preprocessor masks 15%).
    x, _, _ = small.preprocessor(np.array(corpus[:64]))
    x = keras.tree.map_structure(keras.ops.convert_to_numpy, x)
    before = keras.ops.convert_to_numpy(small(x))  # direct call: x is preprocessed
    after = keras.ops.convert_to_numpy(big(x))
    diff = np.abs(before - after).max()
    print(f"Masked-LM logits, {before.shape}: max |diff| = {diff:.3g} "
          f"({diff / np.abs(before).max():.3g} relative to max |logit| "
          f"{np.abs(before).max():.3g})")

    # A from-scratch recipe of 50 steps (peak 2e-4, warmup 5, cosine to 0.1x
    # peak), compressed by LEMON to 40% of it: same peak, decayed by step 20.
    scratch_steps = 50
    schedule = LemonSchedule.from_recipe(2e-4, total_steps=scratch_steps, fraction=0.4,
                                         warmup_steps=5, alpha=0.1)
    big.compile(optimizer=keras.optimizers.AdamW(schedule), weighted_metrics=[])
    print("Fine-tuning the expanded model on LEMON's schedule:")
    history = big.fit(
        np.array(corpus), batch_size=32, epochs=10, steps_per_epoch=5,
        callbacks=[LosslessCheck(small, x), ComputeBudget(scratch_steps, schedule=schedule),
                   SymmetryMonitor(small)],
    )
    logs = history.history
    print(f"Stopped after {logs['budget_steps'][-1]} steps = "
          f"{logs['budget_fraction'][-1]:.0%} of the from-scratch budget; distance "
          f"between duplicated units: {logs['symmetry_distance'][0]:.2e} -> "
          f"{logs['symmetry_distance'][-1]:.2e}")
    out = os.path.join(args.out, "bert_expanded")
    big.save_to_preset(out)
    print(f"Saved the expanded model to {out}/ "
          "(keras_hub.models.BertMaskedLM.from_preset loads it).")


if __name__ == "__main__":
    main()
