"""Reads T5 weights from safetensors only (HF folders or our Flax format) into the T5Encoder tree.

Two on-disk formats are understood:

* a Hugging Face folder: `config.json` + `model.safetensors` (or sharded
  `model-0000x-of-0000y.safetensors` with `model.safetensors.index.json`);
* the t2v_jax format written by `save_flax_checkpoint` / `t2v-convert-t5`: `t5_config.json` +
  `t5_params.safetensors` whose keys are the '/'-joined Flax parameter names.

Pickle-based files (pytorch_model.bin, *.pt, *.pth, *.pkl, *.ckpt) are never opened: unpickling
runs arbitrary code. Every key, shape and dtype is checked against the config from the file
headers before any tensor is read, and all problems are reported together, so a load either
gives the whole tree or raises.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import jax
import numpy as np
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from t2v_jax.text.t5 import T5Config, T5Encoder

FLAX_CONFIG_FILE = "t5_config.json"
FLAX_PARAMS_FILE = "t5_params.safetensors"
FLAX_FORMAT = "t2v_jax.t5_encoder"
HF_CONFIG_FILE = "config.json"
HF_SINGLE_FILE = "model.safetensors"
HF_INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Parts of a full encoder-decoder checkpoint that the encoder does not use.
IGNORED_HF_PREFIXES = ("decoder.", "lm_head.")
# Only the canonical embedding name is read; this alias (tied to it in HF) may also be present.
HF_EMBED_ALIAS = "encoder.embed_tokens.weight"
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")

Params = dict  # nested {name: {... : np.ndarray}}


class CheckpointError(ValueError):
    """A checkpoint does not match the config (the message lists every key that is wrong)."""


def _pickle_refusal(path: str) -> CheckpointError:
    pickles = sorted(f for f in os.listdir(path) if f.endswith(PICKLE_SUFFIXES))
    return CheckpointError(
        f"{path}: no safetensors weights, only pickle-based file(s) {', '.join(pickles)}; "
        "t2v_jax does not unpickle (it can run arbitrary code). Convert them once, in an "
        "environment you trust, e.g.\n"
        "  python -c \"import torch, safetensors.torch as st; sd = torch.load('"
        f"{os.path.join(path, pickles[0])}', weights_only=True); "
        "st.save_file({k: v.contiguous() for k, v in sd.items()}, 'model.safetensors')\"\n"
        "or `transformers.T5EncoderModel.from_pretrained(SRC).save_pretrained(DST)` "
        "(writes model.safetensors), and copy config.json and the tokenizer files beside it."
    )


def hf_safetensors_files(path: str) -> list[str]:
    """The safetensors files of the HF folder `path` (single file, or the shards of the index).

    Raises:
      CheckpointError: when only pickle-based weights exist (nothing is opened).
      FileNotFoundError: when there are no weights at all, or an indexed shard is missing.
    """
    index = os.path.join(path, HF_INDEX_FILE)
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: has no 'weight_map'")
        files = [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise FileNotFoundError(f"{index}: shard(s) missing: {', '.join(missing)}")
        return files
    single = os.path.join(path, HF_SINGLE_FILE)
    if os.path.exists(single):
        return [single]
    if any(f.endswith(PICKLE_SUFFIXES) for f in os.listdir(path)):
        raise _pickle_refusal(path)
    raise FileNotFoundError(f"{path}: no {HF_SINGLE_FILE} or {HF_INDEX_FILE}")


@dataclasses.dataclass(frozen=True)
class _Entry:
    file: str
    dtype: str  # safetensors dtype name, e.g. "F32", "BF16"
    shape: tuple[int, ...]


def _scan_headers(files: list[str]) -> dict[str, _Entry]:
    """Key -> (file, dtype, shape) from the safetensors headers; no tensor data is read."""
    entries: dict[str, _Entry] = {}
    for file in files:
        with safe_open(file, framework="numpy") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                if key in entries:
                    raise CheckpointError(f"{key}: stored twice ({entries[key].file}, {file})")
                s = f.get_slice(key)
                entries[key] = _Entry(file, s.get_dtype(), tuple(s.get_shape()))
    return entries


def _read_float32(entry: _Entry, key: str) -> np.ndarray:
    """Reads one tensor as float32 (numpy has no bfloat16, so BF16 is widened by hand)."""
    if entry.dtype != "BF16":
        with safe_open(entry.file, framework="numpy") as f:
            return np.asarray(f.get_tensor(key), dtype=np.float32)
    with open(entry.file, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        start, end = json.loads(f.read(header_len))[key]["data_offsets"]
    raw = np.fromfile(
        entry.file, dtype="<u2", count=(end - start) // 2, offset=8 + header_len + start
    )
    # bfloat16 is the top half of a float32: shifting it up is exact.
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(entry.shape)


def expected_param_shapes(config: T5Config) -> dict[str, tuple[int, ...]]:
    """'/'-joined Flax parameter name -> shape, from an abstract init (no compute)."""
    tokens = jax.ShapeDtypeStruct((1, 1), np.int32)
    mask = jax.ShapeDtypeStruct((1, 1), np.bool_)
    abstract = jax.eval_shape(T5Encoder(config).init, jax.random.key(0), tokens, mask)
    unboxed = jax.tree.map(
        lambda x: x.value if hasattr(x, "value") else x,
        abstract["params"],
        is_leaf=lambda x: hasattr(x, "names"),
    )
    flat = traverse_util.flatten_dict(unboxed, sep="/")
    return {name: tuple(leaf.shape) for name, leaf in flat.items()}


_Transform = Callable[[np.ndarray], np.ndarray]


def _hf_layout(config: T5Config) -> dict[str, tuple[str, tuple[int, ...], _Transform]]:
    """HF key -> (Flax name, HF shape, HF->Flax transform). torch Linear stores [out, in]."""
    d, h, k, f = config.d_model, config.num_heads, config.d_kv, config.d_ff

    def qkv(w):
        return w.T.reshape(d, h, k)  # [H*K, D] -> [D, H, K]

    def out(w):
        return w.T.reshape(h, k, d)  # [D, H*K] -> [H, K, D]

    def same(w):
        return w

    def transpose(w):
        return w.T

    layout = {"shared.weight": ("token_embedder/embedding", (config.vocab_size, d), same)}
    for i in range(config.num_layers):
        attn, ff, name = f"encoder.block.{i}.layer.0.", f"encoder.block.{i}.layer.1.", f"layers_{i}"
        for hf, ours in (("q", "query"), ("k", "key"), ("v", "value")):
            layout[f"{attn}SelfAttention.{hf}.weight"] = (
                f"{name}/attention/{ours}",
                (h * k, d),
                qkv,
            )
        layout[f"{attn}SelfAttention.o.weight"] = (f"{name}/attention/out", (d, h * k), out)
        if config.has_relative_bias(i):
            layout[f"{attn}SelfAttention.relative_attention_bias.weight"] = (
                f"{name}/attention/rel_bias",
                (config.relative_attention_num_buckets, h),
                same,
            )
        layout[f"{attn}layer_norm.weight"] = (f"{name}/pre_attention_norm/scale", (d,), same)
        layout[f"{ff}layer_norm.weight"] = (f"{name}/pre_mlp_norm/scale", (d,), same)
        wis = ("wi_0", "wi_1") if config.feed_forward_proj == "gated-gelu" else ("wi",)
        for wi in wis:
            layout[f"{ff}DenseReluDense.{wi}.weight"] = (f"{name}/mlp/{wi}", (f, d), transpose)
        layout[f"{ff}DenseReluDense.wo.weight"] = (f"{name}/mlp/wo", (d, f), transpose)
    layout["encoder.final_layer_norm.weight"] = ("final_norm/scale", (d,), same)
    return layout


def _raise_problems(where: str, problems: list[str]) -> None:
    if problems:
        shown = problems[:20] + (
            [f"... and {len(problems) - 20} more"] if len(problems) > 20 else []
        )
        raise CheckpointError(
            f"{where}: checkpoint does not match the config:\n  " + "\n  ".join(shown)
        )


def _check_entry(key: str, entry: _Entry, shape: tuple[int, ...], dtypes: tuple[str, ...]) -> list:
    problems = []
    if entry.shape != shape:
        problems.append(
            f"{key}: shape {entry.shape} in the checkpoint, {shape} expected by the config"
        )
    if entry.dtype not in dtypes:
        problems.append(f"{key}: dtype {entry.dtype} in the checkpoint, expected one of {dtypes}")
    return problems


def read_hf_params(path: str, config: T5Config) -> Params:
    """Reads the encoder weights of HF folder `path` as a nested float32 numpy Flax tree.

    Accepts full encoder-decoder checkpoints (decoder.* and lm_head.* are skipped, unread) and
    `encoder.embed_tokens.weight` in place of (or beside) `shared.weight`.

    Raises:
      CheckpointError: listing every missing or unexpected key and every shape or dtype
        mismatch (key path, checkpoint shape, expected shape); pickle-only folders.
    """
    entries = _scan_headers(hf_safetensors_files(path))
    layout = _hf_layout(config)
    if "shared.weight" not in entries and HF_EMBED_ALIAS in entries:
        layout[HF_EMBED_ALIAS] = layout.pop("shared.weight")
    problems = []
    for key, (_, shape, _) in layout.items():
        if key not in entries:
            problems.append(f"{key}: missing (expected shape {shape})")
        else:
            problems += _check_entry(key, entries[key], shape, _FLOAT_DTYPES)
    known = set(layout) | {HF_EMBED_ALIAS}
    for key, entry in sorted(entries.items()):
        if key not in known and not key.startswith(IGNORED_HF_PREFIXES):
            problems.append(f"{key}: unexpected key (shape {entry.shape}) for this config")
    if HF_EMBED_ALIAS in entries and HF_EMBED_ALIAS not in layout:
        problems += _check_entry(
            HF_EMBED_ALIAS, entries[HF_EMBED_ALIAS], layout["shared.weight"][1], _FLOAT_DTYPES
        )
    _raise_problems(path, problems)
    flat = {
        name: np.ascontiguousarray(transform(_read_float32(entries[key], key)))
        for key, (name, _, transform) in layout.items()
    }
    _check_tree(path, flat, config)
    return traverse_util.unflatten_dict(flat, sep="/")


def _check_tree(where: str, flat: dict[str, np.ndarray], config: T5Config) -> None:
    """Guards the mapping itself: the produced names and shapes must be exactly the model's."""
    expected = expected_param_shapes(config)
    problems = [f"{n}: missing (expected shape {s})" for n, s in expected.items() if n not in flat]
    problems += [f"{n}: unexpected parameter" for n in flat if n not in expected]
    problems += [
        f"{n}: shape {flat[n].shape}, expected {s}"
        for n, s in expected.items()
        if n in flat and flat[n].shape != s
    ]
    _raise_problems(where, problems)


def config_to_json(config: T5Config) -> dict:
    """The architecture fields of `config` (the compute dtype is a load-time choice)."""
    fields = dataclasses.asdict(config)
    fields.pop("dtype")
    return {"format": FLAX_FORMAT, "version": 1, "config": fields}


def read_flax_config(path: str, dtype: str = "float32") -> T5Config:
    """The T5Config stored in a t2v_jax-format folder."""
    file = os.path.join(path, FLAX_CONFIG_FILE)
    with open(file, encoding="utf-8") as f:
        info = json.load(f)
    if info.get("format") != FLAX_FORMAT or info.get("version") != 1:
        raise CheckpointError(f"{file}: not a {FLAX_FORMAT} v1 config (got {info.get('format')!r})")
    return T5Config(**info["config"], dtype=dtype)


def save_flax_checkpoint(path: str, config: T5Config, params: Params) -> None:
    """Writes `t5_config.json` + `t5_params.safetensors` (float32, '/'-joined names) to `path`."""
    flat = traverse_util.flatten_dict(params, sep="/")
    flat = {name: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for name, v in flat.items()}
    _check_tree(path, flat, config)
    os.makedirs(path, exist_ok=True)
    save_file(flat, os.path.join(path, FLAX_PARAMS_FILE), metadata={"format": FLAX_FORMAT})
    with open(os.path.join(path, FLAX_CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(config_to_json(config), f, indent=2)


def read_flax_params(path: str, config: T5Config) -> Params:
    """Reads `t5_params.safetensors`, checking names, shapes and dtype (float32) first."""
    file = os.path.join(path, FLAX_PARAMS_FILE)
    entries = _scan_headers([file])
    expected = expected_param_shapes(config)
    problems = [
        f"{n}: missing (expected shape {s})" for n, s in expected.items() if n not in entries
    ]
    problems += [
        f"{n}: unexpected key (shape {e.shape}) for this config"
        for n, e in entries.items()
        if n not in expected
    ]
    for name, shape in expected.items():
        if name in entries:
            problems += _check_entry(name, entries[name], shape, ("F32",))
    _raise_problems(path, problems)
    with safe_open(file, framework="numpy") as f:
        flat = {name: f.get_tensor(name) for name in expected}
    return traverse_util.unflatten_dict(flat, sep="/")


def is_flax_checkpoint(path: str) -> bool:
    """Whether `path` holds the t2v_jax format (else it is read as a HF folder)."""
    return os.path.exists(os.path.join(path, FLAX_CONFIG_FILE))


def read_checkpoint(path: str | os.PathLike, dtype: str = "float32") -> tuple[T5Config, Params]:
    """(config, float32 numpy params) from a HF folder or a t2v_jax-format folder.

    Raises:
      FileNotFoundError: `path` is not a folder or has neither config file.
      CheckpointError: pickle-only weights, or keys / shapes / dtypes that do not match.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"T5 checkpoint folder {path!r} does not exist")
    if is_flax_checkpoint(path):
        config = read_flax_config(path, dtype)
        return config, read_flax_params(path, config)
    hf_config = os.path.join(path, HF_CONFIG_FILE)
    if not os.path.exists(hf_config):
        if any(f.endswith(PICKLE_SUFFIXES) for f in os.listdir(path)):
            raise _pickle_refusal(path)
        raise FileNotFoundError(f"{path}: neither {HF_CONFIG_FILE} nor {FLAX_CONFIG_FILE}")
    with open(hf_config, encoding="utf-8") as f:
        config = T5Config.from_hf_dict(json.load(f), dtype=dtype)
    return config, read_hf_params(path, config)
