"""`t2v-bench --compare imagen-pytorch`: lucidrains' Unet3D timed at our U-Net's shapes in a side venv.

imagen-pytorch is never imported here nor vendored: it is pip-installed on demand into its own
venv (`IMAGEN_VENV`) and run there as a subprocess. A plain `pip install imagen-pytorch` would
pull torchvision, transformers, accelerate, datasets, ... and, through them, a CUDA build of
torch of several GB. The benchmark only needs `imagen_pytorch.imagen_video.Unet3D`, whose
module imports torch, einops and tqdm, so the venv gets exactly those: `torch==2.13.0` first
(the CPU wheel on this project's machines), then imagen-pytorch with `--no-deps`, then einops,
tqdm and numpy. The runner script imports `imagen_video` without the package's `__init__`
(which imports the trainer and its dependencies) and with a stand-in for `imagen_pytorch.t5`,
whose `get_encoded_dim` downloads a T5 config from the Hugging Face hub when Unet3D's module is
imported (a default argument); the benchmark passes `text_embed_dim` itself.

When the venv cannot be built (no network, no package index) or the model does not run, the
result is `{"skipped": reason}` and the rest of the benchmark goes on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

# The pins: the runner below relies on imagen_video.py's imports in this release.
IMAGEN_PYTORCH = "imagen-pytorch==2.1.0"
TORCH = "torch==2.13.0"
UNET3D_DEPS = ("einops>=0.7.0", "tqdm", "numpy")
IMAGEN_VENV = os.path.join(os.path.expanduser("~"), ".cache", "t2v_jax", "imagen_pytorch_2.1.0")

# Runs in the side venv: Unet3D at the shapes of our benchmark, forward and an Adam train step,
# median seconds. Its arguments come as JSON in argv[1].
_IMAGEN_SCRIPT = r"""
import importlib.util, json, statistics, sys, time, types
# Import imagen_pytorch.imagen_video alone: a bare package (no __init__: it imports the trainer,
# torchvision, transformers, ...) and a stand-in for imagen_pytorch.t5, whose get_encoded_dim
# is called at import time (a default argument of Unet3D) and downloads a T5 config.
spec = importlib.util.find_spec("imagen_pytorch")
package = types.ModuleType("imagen_pytorch")
package.__path__ = list(spec.submodule_search_locations)
t5 = types.ModuleType("imagen_pytorch.t5")
t5.DEFAULT_T5_NAME = "google/t5-v1_1-base"
t5.get_encoded_dim = lambda name: 768
def _no_t5(*args, **kwargs):
    raise RuntimeError("the benchmark passes text embeddings; T5 is not available here")
t5.t5_encode_text = _no_t5
sys.modules.update({"imagen_pytorch": package, "imagen_pytorch.t5": t5})
import torch
from imagen_pytorch.imagen_video import Unet3D
cfg = json.loads(sys.argv[1])
torch.manual_seed(0)
levels = len(cfg["dim_mults"])
attn = tuple(2**i in cfg["attn_factors"] for i in range(levels))
unet = Unet3D(dim=cfg["dim"], dim_mults=tuple(cfg["dim_mults"]), num_resnet_blocks=cfg["blocks"],
              text_embed_dim=cfg["text_dim"], channels=3, attn_heads=cfg["heads"],
              layer_attns=attn, layer_cross_attns=attn)
def inputs(b):
    x = torch.randn(b, 3, cfg["frames"], cfg["size"], cfg["size"])
    return x, torch.rand(b), torch.randn(b, cfg["length"], cfg["text_dim"]), torch.ones(b, cfg["length"], dtype=torch.bool)
def median(fn, n):
    fn(); ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)
fx, ft, fe, fm = inputs(cfg["forward_batch"])
with torch.no_grad():
    fwd = median(lambda: unet(fx, ft, text_embeds=fe, text_mask=fm), cfg["repeats"])
opt = torch.optim.Adam(unet.parameters(), lr=1e-4)
tx, tt, te, tm = inputs(cfg["train_batch"])
def step():
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(unet(tx, tt, text_embeds=te, text_mask=tm), tx)
    loss.backward(); opt.step()
train = median(step, cfg["repeats"])
params = sum(p.numel() for p in unet.parameters())
print(json.dumps({"forward": fwd, "train_step": train, "num_params": params,
                  "torch": torch.__version__, "cuda": torch.version.cuda,
                  "threads": torch.get_num_threads()}))
"""


def _run(cmd: list[str], timeout: float) -> None:
    """One install step; raises CalledProcessError (with pip's stderr) or TimeoutExpired."""
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)


def _side_venv(path: str) -> str:
    """The side venv's python, after building it on first use (see the module docstring)."""
    python = os.path.join(path, "bin", "python")
    stamp = os.path.join(path, "t2v_bench_installed.json")
    wanted = [TORCH, IMAGEN_PYTORCH, *UNET3D_DEPS]
    if os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == wanted:
                return python
    # No stamp: a first or interrupted build; start from an empty venv. (Generous timeouts: on
    # a busy 2-core machine creating the venv alone has taken over 10 minutes.)
    _run([sys.executable, "-m", "venv", "--clear", path], timeout=3600)
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # torch alone first: with it installed, nothing later can ask pip for another torch build.
    _run([*pip, TORCH], timeout=3600)
    _run([*pip, "--no-deps", IMAGEN_PYTORCH], timeout=3600)
    _run([*pip, *UNET3D_DEPS], timeout=3600)
    with open(stamp, "w") as f:
        json.dump(wanted, f)
    return python


def compare_imagen_pytorch(model: dict[str, Any], shape: dict[str, int], repeats: int,
                           venv: str = IMAGEN_VENV) -> dict[str, Any]:  # fmt: skip
    """Times imagen-pytorch's Unet3D at our U-Net's shapes in a side venv (made on demand).

    Args:
      model: our UNetConfig fields (base_channels, channel_mults, num_res_blocks, text_dim,
        num_heads, spatial_attention_resolutions).
      shape: frames, size, text_length, forward_batch, train_batch.
      repeats: timed calls per measurement (median).
      venv: where the side venv lives (built on first use, reused after).

    Returns:
      {"forward": s, "train_step": s, "num_params", "torch", "cuda", "threads"}, or
      {"skipped": reason} when the venv cannot be built (offline, no package index) or the
      model does not run.
    """
    cfg = {
        "dim": model["base_channels"], "dim_mults": list(model["channel_mults"]),
        "blocks": model["num_res_blocks"], "text_dim": model["text_dim"],
        "heads": model["num_heads"], "attn_factors": list(model["spatial_attention_resolutions"]),
        "frames": shape["frames"], "size": shape["size"], "length": shape["text_length"],
        "forward_batch": shape["forward_batch"], "train_batch": shape["train_batch"],
        "repeats": repeats,
    }  # fmt: skip
    try:
        python = _side_venv(venv)
    except subprocess.CalledProcessError as e:
        step = " ".join(str(c) for c in e.cmd[1:])
        detail = (e.stderr or e.stdout or "").strip()[-500:]
        return {
            "skipped": f"could not install {TORCH} and {IMAGEN_PYTORCH} into the side venv "
            f"{venv} (needs PyPI): `{step}` failed: {detail}"
        }
    except (subprocess.TimeoutExpired, OSError) as e:
        return {"skipped": f"could not build the side venv {venv}: {e}"}
    # The side venv must not see our XLA/JAX environment (nor our fake-device flags).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    try:
        out = subprocess.run([python, "-c", _IMAGEN_SCRIPT, json.dumps(cfg)], env=env,
                             capture_output=True, text=True, timeout=3600, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"skipped": "imagen-pytorch run timed out (1 h)"}
    if out.returncode:
        return {"skipped": f"imagen-pytorch failed: {out.stderr.strip()[-800:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])
