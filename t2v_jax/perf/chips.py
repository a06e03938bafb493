"""TPU slices for ahead-of-time compiles: chip data (with sources), slice names, their meshes.

Cloud TPU names slices two ways: `v5p-128` (an accelerator type: v4 and v5p count TensorCores,
two per chip; v5e and v6e count chips) and `v5p:4x4x4` (the chip grid, which is what
`jax.experimental.topologies.get_topology_desc` takes). `parse_topology` accepts both;
`topology_mesh` builds a (data, fsdp, tensor) mesh of the slice's chips from libtpu's topology
description, on a host without TPUs, for `jit(...).lower(...).compile()` with the TPU compiler.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # jax is imported only when a mesh is built: the CLI sets its env first
    import jax


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU chip generation's per-chip figures, as its Google Cloud page states them."""

    name: str
    peak_bf16_flops: float  # FLOP/s
    hbm_bytes: int
    hbm_bytes_per_s: float
    cores_per_chip: int  # TensorCores in the accelerator-type count (v5p-128 = 64 chips)
    grid_dims: int  # 3D torus (v4, v5p) or 2D (v5e, v6e)
    source: str


# HBM capacity: the pages write "95GB" / "16 GB" / "32 GB" (v4: "32 GiB"); like the existing
# `aot.DEVICE_BUDGETS`, the capacity is read as GiB here. Bandwidth is in decimal GB/s.
CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", 275e12, 32 * 2**30, 1200e9, 2, 3,
               "https://cloud.google.com/tpu/docs/v4"),
    "v5e": Chip("v5e", 197e12, 16 * 2**30, 819e9, 1, 2,
                "https://docs.cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("v5p", 459e12, 95 * 2**30, 2765e9, 2, 3,
                "https://cloud.google.com/tpu/docs/v5p-training"),
    "v6e": Chip("v6e", 918e12, 32 * 2**30, 1638e9, 1, 2,
                "https://docs.cloud.google.com/tpu/docs/v6e"),
}  # fmt: skip

# Chip grids of the standard slices (the pages' topology tables), by chip count.
_GRIDS_3D = {
    4: "2x2x1",
    8: "2x2x2",
    16: "2x2x4",
    32: "2x4x4",
    64: "4x4x4",
    128: "4x4x8",
    256: "4x8x8",
    512: "8x8x8",
    1024: "8x8x16",
    2048: "8x16x16",
    4096: "16x16x16",
}
_GRIDS_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
             256: "16x16"}  # fmt: skip
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e"}


class TopologyError(ValueError):
    """An unknown chip or slice name, or a grid that does not fit the chip."""


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice: its chip and chip grid, e.g. v5p with grid "4x4x4" (64 chips)."""

    chip: Chip
    grid: str

    @property
    def num_chips(self) -> int:
        """How many chips the slice has."""
        return math.prod(int(x) for x in self.grid.split("x"))

    @property
    def name(self) -> str:
        """The `get_topology_desc` name, e.g. "v5p:4x4x4"."""
        return f"{self.chip.name}:{self.grid}"

    @property
    def chips_per_host_bounds(self) -> tuple[int, int, int]:
        """The chip grid of one host: 2x2x1, or the whole grid where it is smaller.

        libtpu's compile-only topologies assume 2x2x1 chips per host and refuse a grid that
        does not divide by it, such as the single v5e chip of a Colab TPU runtime ("v5e:1x1").
        """
        dims = [int(x) for x in self.grid.split("x")] + [1] * (3 - self.chip.grid_dims)
        return tuple(min(d, host) for d, host in zip(dims, (2, 2, 1), strict=True))


def known_names() -> str:
    """A short human list of what `parse_topology` accepts."""
    out = []
    for chip in CHIPS.values():
        grids = _GRIDS_3D if chip.grid_dims == 3 else _GRIDS_2D
        counts = ", ".join(f"{chip.name}-{n * chip.cores_per_chip}" for n in grids)
        out.append(f"{chip.name}: {counts} (or {chip.name}:AxB{'xC' * (chip.grid_dims == 3)})")
    return "; ".join(out)


def parse_topology(text: str) -> Topology:
    """`"v5p-128"`, `"v5e-256"`, `"v5p:4x4x4"`, `"v5e:8x8"` -> Topology.

    Raises:
      TopologyError: naming the known chips and slice names.
    """
    match = re.fullmatch(r"\s*([a-z0-9]+?)\s*(?:-(\d+)|:(\d+(?:x\d+)+))\s*", text.lower())
    chip_name = _ALIASES.get(match.group(1), match.group(1)) if match else None
    if chip_name not in CHIPS:
        raise TopologyError(
            f"--topology: unknown chip or slice {text!r}; known chips {', '.join(CHIPS)}; "
            f"slices: {known_names()}"
        )
    chip = CHIPS[chip_name]
    if match.group(3):
        grid = match.group(3)
        if len(grid.split("x")) != chip.grid_dims:
            raise TopologyError(
                f"--topology: {chip.name} has a {chip.grid_dims}D chip grid, got {grid!r}"
            )
        return Topology(chip, grid)
    cores = int(match.group(2))
    grids = _GRIDS_3D if chip.grid_dims == 3 else _GRIDS_2D
    chips, remainder = divmod(cores, chip.cores_per_chip)
    if remainder or chips not in grids:
        raise TopologyError(
            f"--topology: {text!r} is not a standard {chip.name} slice; known: {known_names()}"
        )
    return Topology(chip, grids[chips])


def roofline(flops: float, bytes_accessed: float, chip: Chip) -> dict[str, float]:
    """Step time lower bound max(FLOPs / peak, bytes / HBM bandwidth) and the MFU it implies.

    `flops` and `bytes_accessed` are one chip's (the SPMD program's cost analysis). The MFU is
    the model FLOPs over the bound's time at peak: 1.0 when compute-bound, less when the HBM
    traffic dominates. Real steps are slower (collectives, overheads), so it is an upper bound.
    """
    compute_s = flops / chip.peak_bf16_flops
    memory_s = bytes_accessed / chip.hbm_bytes_per_s
    step_s = max(compute_s, memory_s)
    return {
        "compute_s": compute_s,
        "memory_s": memory_s,
        "step_s": step_s,
        "mfu": compute_s / step_s if step_s else 0.0,
        "bound": "compute" if compute_s >= memory_s else "memory",
    }


INSTALL_HINT = (
    'the TPU compiler comes with libtpu: pip install -c constraints.txt ".[tpu]" (then every '
    "JAX process not started with JAX_PLATFORMS=cpu probes the TPU and holds libtpu's lockfile; "
    "see docs/tpu_preflight.md)"
)


def topology_mesh(topology: Topology, mesh_sizes: tuple[int, int, int]) -> jax.sharding.Mesh:
    """The (data, fsdp, tensor) mesh over a TPU slice's chips, built without any TPU attached.

    Raises:
      TopologyError: data*fsdp*tensor is not the slice's chip count, or libtpu is missing.
    """
    from jax.experimental import topologies

    from t2v_jax import sharding

    if math.prod(mesh_sizes) != topology.num_chips:
        data, fsdp, tensor = mesh_sizes
        raise TopologyError(
            f"--mesh: data*fsdp*tensor = {data}*{fsdp}*{tensor} = {math.prod(mesh_sizes)} but "
            f"{topology.name} has {topology.num_chips} chips"
        )
    try:
        desc = topologies.get_topology_desc(
            topology_name=topology.name,
            platform="tpu",
            chips_per_host_bounds=topology.chips_per_host_bounds,
        )
    except (RuntimeError, ValueError) as e:
        if _libtpu_missing():
            raise TopologyError(f"--topology: {INSTALL_HINT}") from e
        raise
    return sharding.make_mesh(sharding.MeshConfig(*mesh_sizes), desc.devices)


def _libtpu_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("libtpu") is None
