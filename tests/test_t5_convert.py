"""Checkpoint loading rules (safetensors only, strict keys/shapes/dtypes) and t2v-convert-t5."""

import json
import os
import pickle
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from t2v_jax.cli import convert_t5
from t2v_jax.text import ByteTokenizer, CheckpointError, T5Config, TextEncoder, load_t5

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "t5_golden")
Q0 = "encoder.block.0.layer.0.SelfAttention.q.weight"
PROMPTS = ["a red circle moving right", "", "Салом 😀"]


@pytest.fixture
def folder(tmp_path):
    """A writable copy of the golden HF folder."""
    path = tmp_path / "hf"
    shutil.copytree(GOLDEN, path)
    return path


def _rewrite(folder, change):
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors")


class _Tripwire:
    """Unpickling this creates a marker file: the refusal test proves nothing was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.ckpt"])
def test_pickle_only_folder_is_refused_unopened(folder, tmp_path, name):
    os.remove(folder / "model.safetensors")
    marker = tmp_path / "unpickled"
    with open(folder / name, "wb") as f:
        pickle.dump(_Tripwire(str(marker)), f)
    with pytest.raises(
        CheckpointError, match=rf"(?s)only pickle-based file\(s\) {name}.*weights_only"
    ):
        load_t5(folder)
    assert not marker.exists()


def test_folder_without_weights(folder):
    os.remove(folder / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_t5(folder)


def test_wrong_shape_names_key_and_both_shapes(folder):
    _rewrite(folder, lambda t: t.update({Q0: np.zeros((12, 15), np.float32)}))
    with pytest.raises(
        CheckpointError, match=rf"{Q0}: shape \(12, 15\) in the checkpoint, \(12, 16\)"
    ):
        load_t5(folder)


def test_config_mismatch_lists_every_key(folder):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "d_ff": 32}))
    with pytest.raises(CheckpointError) as info:
        load_t5(folder)
    message = str(info.value)
    for layer in range(2):  # every wi_0 / wi_1 / wo of both layers, each with both shapes
        for w, shape in (("wi_0", "(24, 16)"), ("wi_1", "(24, 16)"), ("wo", "(16, 24)")):
            key = f"encoder.block.{layer}.layer.1.DenseReluDense.{w}.weight"
            assert f"{key}: shape {shape} in the checkpoint" in message


def test_missing_extra_and_bad_dtype_keys(folder):
    def change(t):
        del t["encoder.final_layer_norm.weight"]
        t["encoder.block.7.layer.0.layer_norm.weight"] = np.ones(16, np.float32)
        t[Q0] = t[Q0].astype(np.int32)
        t["decoder.block.0.layer.0.layer_norm.weight"] = np.ones(16, np.float32)  # ignored

    _rewrite(folder, change)
    with pytest.raises(CheckpointError) as info:
        load_t5(folder)
    message = str(info.value)
    assert "encoder.final_layer_norm.weight: missing (expected shape (16,))" in message
    assert "encoder.block.7.layer.0.layer_norm.weight: unexpected key" in message
    assert f"{Q0}: dtype I32 in the checkpoint" in message
    assert "decoder." not in message


def test_embed_tokens_alias_is_accepted(folder):
    _rewrite(folder, lambda t: t.update({"encoder.embed_tokens.weight": t.pop("shared.weight")}))
    reference = load_t5(GOLDEN, max_length=16).encode(PROMPTS)[0]
    np.testing.assert_array_equal(load_t5(folder, max_length=16).encode(PROMPTS)[0], reference)


def test_convert_cli_round_trip(tmp_path, capsys):
    dst = tmp_path / "flax"
    assert convert_t5.main([GOLDEN, str(dst)]) == 0
    assert "reloaded and verified identical" in capsys.readouterr().out
    assert {"t5_config.json", "t5_params.safetensors", "tokenizer.json"} <= set(os.listdir(dst))
    ours, ref = load_t5(dst, max_length=16), load_t5(GOLDEN, max_length=16)
    assert ours.config == ref.config
    for a, b in zip(jax.tree.leaves(ours.params), jax.tree.leaves(ref.params), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ours.encode(PROMPTS)[0], ref.encode(PROMPTS)[0])

    assert convert_t5.main([GOLDEN, str(dst)]) == 1  # refuses to overwrite
    assert "not empty; pass --overwrite" in capsys.readouterr().err
    assert convert_t5.main([GOLDEN, str(dst), "--overwrite"]) == 0


def test_flax_checkpoint_is_checked(tmp_path):
    dst = tmp_path / "flax"
    assert convert_t5.main([GOLDEN, str(dst)]) == 0
    tensors = load_file(dst / "t5_params.safetensors")
    tensors["final_norm/scale"] = tensors["final_norm/scale"][:8]
    save_file(tensors, dst / "t5_params.safetensors")
    with pytest.raises(
        CheckpointError, match=r"final_norm/scale: shape \(8,\) in the checkpoint, \(16,\)"
    ):
        load_t5(dst)


def test_models_trained_here_save_and_load(tmp_path):
    config = T5Config(vocab_size=259, d_model=8, d_kv=4, d_ff=16, num_layers=2, num_heads=2,
                      per_layer_relative_bias=True)  # fmt: skip
    encoder = TextEncoder.init_random(config, ByteTokenizer(), jax.random.key(0), max_length=32)
    encoder.save(tmp_path / "mine")
    again = load_t5(tmp_path / "mine", max_length=32)
    assert isinstance(again.tokenizer, ByteTokenizer) and again.config == config
    np.testing.assert_array_equal(again.encode(PROMPTS)[0], encoder.encode(PROMPTS)[0])
