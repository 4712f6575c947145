"""The replication benchmarks: their data loaders, and a --quick smoke run.

The smoke run asserts only that each script completes and writes its table
and plot (the issue's CI contract); the numbers come from full runs, recorded
in benchmarks/RESULTS.md.
"""

import gzip
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks")
sys.path.insert(0, BENCHMARKS)

import _data  # noqa: E402


def test_idx_reader_round_trips(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in images.shape)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(header + images.tobytes())
    np.testing.assert_array_equal(_data._read_idx(path), images)


def test_rst_keeps_prose_and_drops_markup():
    text = """Title
=====

The :func:`open` call returns a ``file`` object; see `the docs <https://x>`_ for
more about **buffering** and text mode::

    f = open("x")
    f.read()

.. note::

   A note directive is dropped with its body.

+-----+-----+
| a   | b   |
+-----+-----+

After the example, this paragraph is English prose again, with enough words.
"""
    paragraphs = _data.prose(_data._rst_paragraphs(text))
    assert paragraphs == [
        "The open call returns a file object; see the docs for more about "
        "buffering and text mode:",
        "After the example, this paragraph is English prose again, with enough words.",
    ]


def test_vim_help_drops_examples_and_tags():
    text = """*intro.txt*\tFor Vim version 9.0.

Use the |:help| command to read about any part of Vim, as shown in these
examples of the command that follow below: >
\t:help x
\t:help y
<
The *tag* words are anchors, and this sentence is the last one here.
"""
    paragraphs = _data.prose(_data._vim_paragraphs(text))
    assert paragraphs == [
        "Use the :help command to read about any part of Vim, as shown in these "
        "examples of the command that follow below:",
        "The words are anchors, and this sentence is the last one here.",
    ]


def test_missing_package_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(_data, "FASHION_DIR", str(tmp_path))
    with pytest.raises(_data.DataMissingError, match="dataset-fashion-mnist"):
        _data.load_fashion_mnist()
    monkeypatch.setitem(_data.TEXT_SOURCES, "vim-runtime", str(tmp_path / "*.txt"))
    with pytest.raises(_data.DataMissingError, match="vim-runtime"):
        _data.load_english_paragraphs(max_chars=1000)


@pytest.mark.skipif(keras.backend.backend() != "jax",
                    reason="runs the scripts in their own processes, on JAX; once "
                           "per CI run is enough (5-7 minutes each on 2 busy cores)")
@pytest.mark.parametrize("task", ["vit", "bert", "llama"])
def test_replication_quick_run_writes_its_table(tmp_path, task):
    script = os.path.join(BENCHMARKS, f"replicate_{task}.py")
    env = dict(os.environ, KERAS_BACKEND="jax")
    proc = subprocess.run([sys.executable, script, "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = (tmp_path / "RESULTS.md").read_text()
    assert f"<!-- {task}:begin -->" in results and f"<!-- {task}:end -->" in results
    assert "| LEMON | 2 |" in results and "| Random init | 1 |" in results
    assert (tmp_path / "results" / f"{task}.png").stat().st_size > 0
    assert "Regime checks" in results and "copy drift" in results

    if task != "vit":
        return  # resuming is the protocol's, the same for every task: checked once
    # Resuming: every run is cached, so a report-only pass trains nothing
    # and writes the same table.
    proc = subprocess.run([sys.executable, script, "--quick", "--out", str(tmp_path),
                           "--report-only"], capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "(cached)" in proc.stdout and " steps, " not in proc.stdout, proc.stdout
    assert "Incomplete" not in (tmp_path / "RESULTS.md").read_text()


def test_run_cache_is_keyed_by_every_setting(tmp_path):
    import _replication

    cache = _replication.RunCache(str(tmp_path))
    settings = dict(task=dict(name="t", steps=10), label="LEMON + carried optimizer",
                    seed=1, fraction=0.5, options=dict(noise_scale=0.1))
    run = _replication.Run("LEMON + carried optimizer", 1, 0.5, 5, 2.0,
                           [(0, 0.5), (5, 0.75)], 1.5, [(0, 0.0), (5, 0.01)])
    assert cache.load(settings) is None
    cache.save(settings, run)
    assert cache.load(settings) == run
    assert os.path.basename(cache.path(settings)).startswith("lemon-carried-optimizer-f0.5-s1-")
    for changed in (dict(seed=0), dict(fraction=0.6),
                    dict(options=dict(noise_scale=1.0)), dict(task=dict(name="t", steps=20))):
        assert cache.load({**settings, **changed}) is None, changed


def test_regime_checks():
    import _replication

    class Task:
        metric, higher_is_better = "accuracy", True

    def run(curve):
        return _replication.Run("x", 0, None, curve[-1][0], 1.0, curve, 0.0)

    small = run([(0, 0.1), (80, 0.84), (100, 0.85)])  # last 20%: 0.01 of 0.75
    scratch = [run([(0, 0.1), (100, 0.88)]), run([(0, 0.1), (100, 0.884)])]
    assert [ok for _, ok in _replication.regime_checks(Task, small, scratch)] == [True, True]
    slow = run([(0, 0.1), (80, 0.7), (100, 0.85)])  # last 20%: 0.15 of 0.75
    close = [run([(0, 0.1), (100, 0.86)]), run([(0, 0.1), (100, 0.864)])]  # gap 0.012 < 5 x 0.004
    assert [ok for _, ok in _replication.regime_checks(Task, slow, close)] == [False, False]
