"""Expand a small ViT image classifier (2 x 64) to 4 x 96 — a non-multiple width.

ViT is pre-LN, so any larger width is exact: the residual stream's extra
units hold the mean of the copies and every LayerNorm's epsilon is rescaled.
Trains a tiny ViT on a made-up task (stripe orientation), saves it as a local
preset, expands it, prints the measured max |diff|, fine-tunes with `fit` and
saves the result with `save_to_preset`.

Usage: python examples/expand_vit.py [--out DIR]
"""

import argparse
import os

import keras
import keras_hub
import numpy as np

import keras_lemon


def stripes(n, seed=0):
    """Noisy 16x16 images of horizontal (0) or vertical (1) stripes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    grid = np.arange(16)[None, :, None] * np.ones((1, 1, 16))
    horizontal = np.sin(grid * 1.3 + phase)
    images = np.where(labels[:, None, None] == 0, horizontal, horizontal.transpose(0, 2, 1))
    images = images[..., None].repeat(3, -1) + rng.normal(0, 0.5, (n, 16, 16, 3))
    return images.astype("float32"), labels


def compile_classifier(model):
    model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    x, y = stripes(512)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(16, 16, 3), patch_size=4, num_layers=2, num_heads=2,
        hidden_dim=64, mlp_dim=128,
    )
    small = keras_hub.models.ViTImageClassifier(backbone, num_classes=2)
    compile_classifier(small)
    small.fit(x, y, batch_size=64, epochs=2)
    preset = os.path.join(args.out, "vit_small")
    small.save_to_preset(preset)
    small = keras_hub.models.ViTImageClassifier.from_preset(preset)

    print(keras_lemon.expansion_plan(small, hidden=96, layers=4))
    big = keras_lemon.expand_model(small, hidden=96, layers=4, seed=0)
    before, after = (keras.ops.convert_to_numpy(m.predict(x, verbose=0)) for m in (small, big))
    diff = np.abs(before - after).max()
    print(f"Logits {before.shape}: max |diff| = {diff:.3g} "
          f"({diff / np.abs(before).max():.3g} relative)")

    compile_classifier(big)
    big.fit(x, y, batch_size=64, epochs=1)
    out = os.path.join(args.out, "vit_expanded")
    big.save_to_preset(out)
    print(f"Saved the expanded model to {out}/")


if __name__ == "__main__":
    main()
