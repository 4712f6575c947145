"""The `keras-lemon` command line: expand (plan, progress, check, write), inspect, errors.

Most tests call `keras_lemon.cli.main` in this process (the backend is this
pass's); one runs the installed console script.
"""

import os
import shutil
import subprocess
import sys

import keras
import keras_hub
import pytest
from conftest import TOLERANCE
from preset_builders import bert_backbone_preset
from preset_builders import bert_masked_lm_preset
from preset_builders import hf_bert_directory
from preset_builders import vit_classifier_preset

import keras_lemon
from keras_lemon.cli import main


def run(argv, capsys):
    """`main(argv)` -> (exit code, stdout, stderr); argparse's exits included."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_expand_prints_plan_check_and_destination(tmp_path, capsys):
    src, dst = str(tmp_path / "small"), str(tmp_path / "big")
    bert_masked_lm_preset(src)
    code, out, err = run(["expand", src, dst, "--hidden", "32", "--layers", "4",
                          "--heads", "2", "--seed", "5", "--noise-scale", "0.1"], capsys)
    assert code == 0, err
    assert f"source: {src} (keras format) with BertMaskedLMPreprocessor" in out
    assert "BertMaskedLM expansion (lemon): layers 2->4, hidden 16->32, heads 2->2" in out
    assert "blocks: 0, new<-0, 1, new<-1" in out
    assert "transformer_layer_3/self_attention_layer/query/kernel" in out  # the table
    assert "lossless check: max |diff| / max |output| = " in out
    assert f"wrote {dst} (BertMaskedLM, seed 5)" in out
    assert "transplanting" in err and "variables" in err  # the progress bar
    record = keras_lemon.read_expansion(dst)
    assert record["seed"] == 5 and record["lossless_error"] <= TOLERANCE
    assert record["noise_scale"] == 0.1
    assert f"{record['lossless_error']:.2e}" in out
    assert keras_hub.models.BertMaskedLM.from_preset(dst).backbone.num_layers == 4


def test_dry_run_writes_nothing(tmp_path, capsys):
    src, dst = str(tmp_path / "small"), str(tmp_path / "big")
    vit_classifier_preset(src)
    code, out, err = run(["expand", src, dst, "--hidden", "24", "--layers", "3",
                          "--placement", "stack", "--dry-run"], capsys)
    assert code == 0, err
    assert "ViTImageClassifier expansion (lemon): layers 2->3, hidden 16->24" in out
    assert "dry run: nothing written" in out
    assert not os.path.exists(dst)
    assert sorted(os.listdir(tmp_path)) == ["small"]


def test_dry_run_with_positions(tmp_path, capsys):
    src, dst = str(tmp_path / "small"), str(tmp_path / "big")
    vit_classifier_preset(src)
    code, out, err = run(["expand", src, dst, "--positions", "1,1", "--dry-run"], capsys)
    assert code == 0, err
    assert "layers 2->4" in out and "blocks: 0, 1, new<-1, new<-1" in out
    assert not os.path.exists(dst)


def test_inspect_keras_and_hugging_face_presets(tmp_path, capsys):
    src = str(tmp_path / "small")
    bert_masked_lm_preset(src)
    code, out, err = run(["inspect", src], capsys)
    assert code == 0, err
    assert f"preset: {src} (keras format) with BertMaskedLMPreprocessor" in out
    assert "model: BertMaskedLM (keras-hub BertMaskedLM (post-LN))" in out
    assert "layer norm: post-LN" in out
    assert "sizes: layers 2, hidden 16, heads 2 of size 8, intermediate 32" in out
    assert "hidden: multiples of 16" in out and "32, 48, 64" in out
    assert "heads at hidden 32: 2 (size 16), 4 (size 8, default)" in out

    hf = hf_bert_directory(str(tmp_path / "hf"))
    code, out, err = run(["inspect", hf], capsys)
    assert code == 0, err
    assert "(transformers format) with BertTokenizer" in out
    assert "model: BertBackbone" in out

    vit = str(tmp_path / "vit")
    vit_classifier_preset(vit)
    code, out, _ = run(["inspect", vit], capsys)
    assert "layer norm: pre-LN" in out and "hidden: any >= 16" in out


@pytest.mark.parametrize("argv,message", [
    (["expand", "SRC", "DST", "--hidden", "-3"], "argument --hidden: expected a positive integer"),
    (["expand", "SRC", "DST", "--layers", "two"], "argument --layers: expected a positive integer"),
    (["expand", "SRC", "DST", "--placement", "middle"], "argument --placement: invalid choice"),
    (["expand", "SRC", "DST", "--positions", "1,x"], "argument --positions: expected comma-"),
    (["expand", "SRC", "DST", "--positions", "5"], "positions [5] are not source block indices"),
    (["expand", "SRC"], "the following arguments are required: DST"),
    (["shrink", "SRC"], "invalid choice: 'shrink'"),
    (["expand", "SRC", "DST", "--hidden", "24"], "hidden must be a multiple of 16"),
    (["expand", "SRC", "DST", "--layers", "1"], "layers=1 would shrink the model"),
    (["expand", "SRC", "DST", "--heads", "3", "--hidden", "32"], "heads=3 does not fit hidden=32"),
    (["expand", "MISSING", "DST"], "Preset directory '{tmp}/MISSING' does not exist"),
    (["expand", "SRC", "SRC"], "is the source preset"),
    (["inspect", "MISSING"], "Preset directory '{tmp}/MISSING' does not exist"),
    (["expand", "SRC", "DST", "--noise-scale", "-1"], "noise_scale must be a finite number >= 0"),
    (["expand", "SRC", "DST", "--method", "net2net", "--noise-scale", "0.1"],
     "has no effect with method='net2net'"),
])
def test_bad_arguments_one_line_exit_2_nothing_written(tmp_path, capsys, argv, message):
    src = str(tmp_path / "SRC")
    bert_backbone_preset(src)
    argv = [os.path.join(str(tmp_path), a) if a in ("SRC", "DST", "MISSING") else a for a in argv]
    code, out, err = run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("keras-lemon: error: "), err
    assert message.format(tmp=tmp_path) in lines[0]
    assert sorted(os.listdir(tmp_path)) == ["SRC"]


def test_existing_destination(tmp_path, capsys):
    src, dst = str(tmp_path / "small"), tmp_path / "big"
    bert_backbone_preset(src)
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    code, _, err = run(["expand", src, str(dst), "--hidden", "32"], capsys)
    assert code == 2 and "exists and is not empty; pass overwrite=True (CLI: --overwrite)" in err
    assert os.listdir(dst) == ["keep.txt"]
    code, out, err = run(["expand", src, str(dst), "--hidden", "32", "--overwrite"], capsys)
    assert code == 0, err
    assert keras_hub.models.BertBackbone.from_preset(str(dst)).hidden_dim == 32


def test_not_lossless_exits_1_and_writes_nothing(tmp_path, capsys, monkeypatch):
    src, dst = str(tmp_path / "small"), str(tmp_path / "big")
    bert_backbone_preset(src)
    monkeypatch.setattr(keras_lemon.support.GraphFamily, "verify",
                        lambda *a, **k: (_ for _ in ()).throw(
                            keras_lemon.ExpansionError("not lossless on a probe batch")))
    code, _, err = run(["expand", src, dst, "--hidden", "32"], capsys)
    assert code == 1 and "keras-lemon: expansion failed: not lossless" in err
    assert sorted(os.listdir(tmp_path)) == ["small"]


def test_installed_console_script(tmp_path):
    script = shutil.which("keras-lemon", path=os.path.dirname(sys.executable))
    assert script, "the keras-lemon console script is not installed (pip install -e .)"
    src, dst = str(tmp_path / "small"), str(tmp_path / "big")
    bert_backbone_preset(src)
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend()}
    done = subprocess.run([script, "expand", src, dst, "--hidden", "32", "--seed", "1"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"wrote {dst} (BertBackbone, seed 1)" in done.stdout
    assert keras_lemon.read_expansion(dst)["backend"] == keras.backend.backend()
    bad = subprocess.run([script, "expand", src, str(tmp_path / "x"), "--hidden", "20"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("keras-lemon: error: ")
    assert not os.path.exists(tmp_path / "x")
