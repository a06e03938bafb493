"""Per-host input pipeline: TFDS data source -> shard -> shuffle -> per-stage transform -> batch.

Everything is a grain `MapDataset`, i.e. random access: batch i of a host is a pure function of
(seed, process_index, process_count, i). The hosts of a pod split one global stream: the split is
shuffled and augmented the same way on every host, cut into global batches of
`batch_size * process_count` consecutive elements, and host p takes rows
[p * batch_size, (p + 1) * batch_size) of each. So the hosts read disjoint examples, together
exactly what one process with the whole global batch reads, and the trained model does not depend
on how many hosts fed it. The iterator's state is therefore just the next batch
index, which is JSON (see `DataIterator.get_state`), and a restored run continues with the exact
next batch. No TensorFlow is needed: datasets are read through `tfds.data_source` (array_record).

Batch (numpy, per host; B = per-host batch size, L = max text length):
  'video'      float32 [B, T, H, W, 3] in [-1, 1]
  'low_res'    float32 [B, t, h, w, 3] in [-1, 1]   (SR stages only; NOT upsampled)
  'frame_mask' bool    [B, T]   True = frame of a video, False = independent image frame
  'text_ids'   int32   [B, L] and 'text_mask' bool [B, L]   (tokenizer), or
  'text_emb'   float32 [B, L, D] and 'text_mask' bool [B, L]   (precomputed embedding cache)
With `return_labels=True` the batch also holds 'caption' (str [B]), 'index' (int64 [B], the
record index in its split) and, for `shapes`, the structured 'labels'; these are for eval and
must not be passed to a jitted step.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import flags

from t2v_jax import paths

# Imported for their side effect: registering the builders with TFDS.
from t2v_jax.data import real_footage, shapes, transforms, video_folder  # noqa: F401


class Tokenizer(Protocol):
    """What the pipeline needs of a tokenizer (t2v_jax.text.tokenizer's classes fit)."""

    def tokenize(
        self, prompts: Sequence[str], max_length: int
    ) -> tuple[np.ndarray, np.ndarray, Any]: ...


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data a run reads.

    Attributes:
      name: TFDS "name/config", e.g. "shapes/32x16" or "video_folder/my_clips".
      data_dir: TFDS data dir (None: TFDS's default).
      split: split to read (any TFDS split string, e.g. "train[:90%]").
      image_name: optional TFDS name of image data mixed into video batches (joint training),
        e.g. "shapes/images32x16"; each of its examples is a stack of independent images.
      image_split: split of `image_name`.
      image_fraction: fraction of each batch's elements taken from `image_name`.
      max_text_length: L, token length of 'text_ids' / 'text_mask'.
      shuffle: shuffle the records (reshuffled every epoch).
      text_embeddings: directory of precomputed T5 caption embeddings (written by
        tools/precompute_text_embeddings.py); when set, batches carry 'text_emb' instead of
        'text_ids', no tokenizer is needed, and max_text_length must equal the cache's.
    """

    name: str = "shapes/32x16"
    data_dir: str | None = None
    split: str = "train"
    image_name: str | None = None
    image_split: str = "train"
    image_fraction: float = 0.0
    max_text_length: int = 64
    shuffle: bool = True
    text_embeddings: str | None = None

    def __post_init__(self):
        if not 0.0 <= self.image_fraction < 1.0:
            raise ValueError(f"image_fraction={self.image_fraction}; must be in [0, 1)")
        if self.image_fraction > 0 and not self.image_name:
            raise ValueError("image_fraction > 0 needs image_name (a TFDS image dataset)")
        if self.max_text_length < 1:
            raise ValueError(f"max_text_length={self.max_text_length}; must be >= 1")


@dataclasses.dataclass(frozen=True)
class StageDataConfig:
    """What one cascade stage trains on.

    base: 'video' = `frames` frames (every `frame_stride`-th source frame) at (height, width).
    tsr:  'video' as for base; 'low_res' = every (frames // low_frames)-th of those frames.
    ssr:  'video' as for base; 'low_res' = its box-filter downsample to (low_height, low_width).
    random_crop=(h, w): train on a random h x w window of the (height, width) clip (SR patch
    training); 'low_res' is then the same window of the low-res clip, h*low_height/height tall.
    low_res_filter (ssr): how 'low_res' is made from 'video'. "box": the area average (the
    demo's SR stages, whose input is the stage below's output); "bicubic": quantised to uint8
    and shrunk by Pillow's antialiased bicubic, exactly what `Pipeline.sample(init_video=...)`
    and `t2v_jax.eval.sr_eval` do to a user's clip (an SR stage for real footage).
    """

    kind: Literal["base", "tsr", "ssr"] = "base"
    frames: int = 8
    height: int = 16
    width: int = 16
    low_frames: int | None = None
    low_height: int | None = None
    low_width: int | None = None
    random_crop: tuple[int, int] | None = None
    frame_stride: int = 1
    low_res_filter: Literal["box", "bicubic"] = "box"

    def __post_init__(self):
        if self.low_res_filter not in ("box", "bicubic"):
            raise ValueError(
                f"StageDataConfig.low_res_filter={self.low_res_filter!r}; must be 'box' or 'bicubic'"
            )
        for name in ("frames", "height", "width", "frame_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"StageDataConfig.{name}={getattr(self, name)}; must be >= 1")
        if self.kind == "base" and (self.low_frames or self.low_height or self.low_width):
            raise ValueError(
                "StageDataConfig: kind='base' takes no low_frames/low_height/low_width"
            )
        if self.kind == "tsr":
            lf = self.low_frames
            if lf is None or not 1 <= lf < self.frames or self.frames % lf:
                raise ValueError(
                    f"StageDataConfig: kind='tsr' needs low_frames dividing frames={self.frames} "
                    f"and smaller than it, got {lf}"
                )
            if self.low_height not in (None, self.height) or self.low_width not in (
                None,
                self.width,
            ):
                raise ValueError(
                    "StageDataConfig: kind='tsr' keeps the resolution (low_height/width)"
                )
        if self.kind == "ssr":
            if self.low_frames not in (None, self.frames):
                raise ValueError("StageDataConfig: kind='ssr' keeps the frame count (low_frames)")
            lh, lw = self.low_height, self.low_width
            if lh is None or lw is None or self.height % lh or self.width % lw:
                raise ValueError(
                    "StageDataConfig: kind='ssr' needs low_height/low_width dividing "
                    f"height/width={self.height}/{self.width}, got {lh}/{lw}"
                )
            if (lh, lw) == (self.height, self.width):
                raise ValueError("StageDataConfig: kind='ssr' needs a smaller low resolution")
        if self.random_crop is not None:
            ch, cw = self.random_crop
            if not (0 < ch <= self.height and 0 < cw <= self.width):
                raise ValueError(
                    f"StageDataConfig.random_crop={self.random_crop} must fit in "
                    f"{self.height}x{self.width}"
                )
            if self.kind == "ssr" and (
                ch % (self.height // self.low_height) or cw % (self.width // self.low_width)
            ):
                raise ValueError(
                    "StageDataConfig.random_crop must be a multiple of the SSR factor "
                    f"{self.height // self.low_height}x{self.width // self.low_width}"
                )

    @property
    def video_shape(self) -> tuple[int, int, int, int]:
        """[T, H, W, 3] of one element's 'video' (after any random crop)."""
        h, w = self.random_crop or (self.height, self.width)
        return (self.frames, h, w, 3)

    @property
    def low_res_shape(self) -> tuple[int, int, int, int] | None:
        """[t, h, w, 3] of one element's 'low_res', or None for the base stage."""
        t, h, w, c = self.video_shape
        if self.kind == "tsr":
            return (self.low_frames, h, w, c)
        if self.kind == "ssr":
            return (t, h * self.low_height // self.height, w * self.low_width // self.width, c)
        return None


def stage_transform(
    record: dict, stage: StageDataConfig, rng: np.random.Generator, *, is_image: bool = False
) -> dict[str, np.ndarray]:
    """Turns one decoded record into one training element of `stage` (no text, no batch axis).

    Args:
      record: has 'video' uint8 [T0, H0, W0, 3] (a clip, or T0 independent images if is_image).
      stage: the stage's data config.
      rng: per-element generator (temporal offset, image choice, crop position).
      is_image: the record's frames are independent images (frame_mask False).

    Returns:
      {'video': float32 [T, H, W, 3], 'frame_mask': bool [T], and 'low_res' for SR stages}.
    """
    src = record["video"]  # [T0, H0, W0, 3] uint8
    t0 = src.shape[0]
    if is_image:
        if t0 < stage.frames:
            raise ValueError(f"image record has {t0} images, the stage needs {stage.frames}")
        clip = src[np.sort(rng.choice(t0, size=stage.frames, replace=False))]
    else:
        span = (stage.frames - 1) * stage.frame_stride + 1
        if t0 < span:
            raise ValueError(
                f"record has {t0} frames; frames={stage.frames} x frame_stride="
                f"{stage.frame_stride} needs {span}"
            )
        start = int(rng.integers(t0 - span + 1))
        clip = src[start : start + span : stage.frame_stride]
    video = transforms.fit_video(clip.astype(np.float32), stage.height, stage.width)
    if stage.random_crop is not None:
        video, _ = transforms.random_crop(video, *stage.random_crop, rng)
    video = video / 127.5 - 1.0  # [T, H, W, 3] in [-1, 1]
    out = {
        "video": video.astype(np.float32),
        "frame_mask": np.full((stage.frames,), not is_image),
    }
    if stage.kind == "tsr":
        out["low_res"] = out["video"][:: stage.frames // stage.low_frames]
    elif stage.kind == "ssr":
        _, lh, lw, _ = stage.low_res_shape
        if stage.low_res_filter == "bicubic":
            video_u8 = np.round((out["video"] + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
            low = transforms.bicubic_resize(video_u8, lh, lw)
            out["low_res"] = (low.astype(np.float32) / 127.5 - 1.0).astype(np.float32)
        else:
            out["low_res"] = transforms.box_downsample(out["video"], lh, lw)
    return out


def _source(name: str, split: str, data_dir: str | None):
    # download=False: preparing is a separate, once-only step (see `prepare`), never something
    # every host of a pod races to do on its first read.
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)


def prepare(name: str, data_dir: str | None = None, **builder_kwargs) -> None:
    """Builds TFDS dataset `name` ("name/config") into `data_dir` if it is not there yet."""
    tfds.builder(name, data_dir=data_dir, **builder_kwargs).download_and_prepare()


def _labels(record: dict) -> dict:
    out = {"caption": _text(record["caption"])}
    if "objects" in record:
        out["labels"] = {
            "objects": dict(record["objects"]),
            "num_objects": np.int32(record["num_objects"]),
            "background": record["background"],
        }
    return out


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _element_dataset(
    name: str,
    split: str,
    data_dir: str | None,
    stage: StageDataConfig,
    *,
    seed: int,
    shuffle: bool,
    num_epochs: int | None,
    is_image: bool,
    return_labels: bool,
) -> grain.MapDataset:
    """The run's global stream of transformed elements (with 'caption' and, if asked, labels).

    Identical on every host: element j is a pure function of (seed, j), so hosts can each take
    their rows of it (`_host_batches`) without talking to each other.
    """
    source = _source(name, split, data_dir)
    n = len(source)
    ds = grain.MapDataset.source(source)
    # Keep the record index through slicing/shuffling so eval (and the shard test) can name it.
    # Later epochs of `repeat` reach this map with indices past n, hence the modulo.
    ds = ds.map_with_index(lambda i, r: (i % n, r))
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)

    def transform(item, rng: np.random.Generator) -> dict:
        index, record = item
        out = stage_transform(record, stage, rng, is_image=is_image)
        out["caption"] = _text(record["caption"])
        if return_labels:
            out.update(_labels(record))
            out["index"] = np.int64(index)
        return out

    # A fixed derived seed: crop offsets etc. depend on (seed, element position) only.
    return ds.random_map(transform, seed=seed + 1)


def _host_batches(
    elements: grain.MapDataset, batch_size: int, process_index: int, process_count: int
) -> grain.MapDataset:
    """Host p's batches of `batch_size`: rows [p * B, (p + 1) * B) of each global batch.

    Global batch i is the `batch_size * process_count` elements from i * B * P on; cutting the
    stream into per-host-sized chunks and taking every P-th chunk from p gives exactly those
    rows, and each host transforms only its own elements. A finite stream is trimmed so that
    every host has the same number of batches (a pod steps in lockstep).
    """
    chunks = elements.batch(batch_size, drop_remainder=True)
    if process_count > 1:
        chunks = chunks[: len(chunks) - len(chunks) % process_count]
        chunks = chunks[process_index::process_count]
    return chunks


class DataIterator:
    """Iterator over per-host batches whose position checkpoints as JSON.

    `get_state()` returns a small JSON-serialisable dict; `set_state(state)` on an iterator built
    with the same arguments (worker_count included: with workers the state lists each worker's
    position) makes the next batch the one that followed when the state was taken.
    """

    def __init__(self, dataset: grain.IterDataset):
        self._dataset = dataset
        self._iterator = iter(dataset)

    def __iter__(self) -> DataIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def get_state(self) -> dict:
        """JSON-serialisable position of the iterator."""
        return self._iterator.get_state()

    def set_state(self, state: dict) -> None:
        """Moves the iterator to a position returned by `get_state`."""
        self._iterator.set_state(state)

    def close(self) -> None:
        """Stops prefetch threads and worker processes (also done at garbage collection)."""
        self._iterator.close()

    def __enter__(self) -> DataIterator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


EMBEDDINGS_FILE = "embeddings.safetensors"
CAPTIONS_FILE = "captions.json"


def save_caption_embeddings(path: str, captions: Sequence[str], cache: Any) -> None:
    """Writes a caption-embedding cache directory that `DataConfig.text_embeddings` can name.

    Args:
      path: directory to create (or overwrite files in); a local path or a URL (gs://...),
        which is written locally first and then uploaded.
      captions: the distinct captions, in the order of the cache's rows.
      cache: a `t2v_jax.text.cache.EmbeddingCache` with one row per caption.
    """
    import tempfile

    from t2v_jax.text import cache as cache_lib  # the T5 side; only cache users need it

    if len(captions) != len(cache):
        raise ValueError(f"captions has {len(captions)} entries, the cache {len(cache)} rows")
    with tempfile.TemporaryDirectory() as tmp:
        local = tmp if paths.is_url(path) else os.path.expanduser(path)
        os.makedirs(local, exist_ok=True)
        cache_lib.save_embedding_cache(os.path.join(local, EMBEDDINGS_FILE), cache)
        with open(os.path.join(local, CAPTIONS_FILE), "w", encoding="utf-8") as f:
            json.dump({"captions": list(captions)}, f, ensure_ascii=False)
        if paths.is_url(path):
            paths.upload_folder(local, path)


def load_caption_embeddings(path: str) -> tuple[dict[str, int], Any]:
    """({caption: row}, EmbeddingCache) from a directory written by `save_caption_embeddings`.

    A URL (gs://...) is copied to a local cache folder first (`t2v_jax.paths.stage_local`).
    """
    from t2v_jax.text import cache as cache_lib

    local = paths.stage_local(path)
    with open(os.path.join(local, CAPTIONS_FILE), encoding="utf-8") as f:
        captions = json.load(f)["captions"]
    cache = cache_lib.EmbeddingCache.load(os.path.join(local, EMBEDDINGS_FILE))
    if len(captions) != len(cache):
        raise ValueError(f"{path}: {len(captions)} captions but {len(cache)} cached rows")
    return {c: i for i, c in enumerate(captions)}, cache


def _batch_finisher(
    data_cfg: DataConfig, tokenizer: Tokenizer | None, return_labels: bool
) -> Callable[[dict], dict]:
    rows, cache = None, None
    if data_cfg.text_embeddings is not None:
        rows, cache = load_caption_embeddings(data_cfg.text_embeddings)
        if cache.max_length != data_cfg.max_text_length:
            raise ValueError(
                f"max_text_length={data_cfg.max_text_length} but the embedding cache "
                f"{data_cfg.text_embeddings} holds max_length={cache.max_length}"
            )
    elif tokenizer is None:
        raise ValueError("tokenizer is None and data_cfg.text_embeddings is unset; give one")

    def finish(batch: dict) -> dict:
        captions = [str(c) for c in batch["caption"]]
        if cache is not None:
            missing = [c for c in captions if c not in rows]
            if missing:
                raise ValueError(
                    f"caption {missing[0]!r} is not in the embedding cache "
                    f"{data_cfg.text_embeddings}; rerun tools/precompute_text_embeddings.py"
                )
            emb, mask = cache.lookup([rows[c] for c in captions])
            batch["text_emb"] = emb  # [B, L, D] float32
            batch["text_mask"] = mask  # [B, L] bool
        else:
            ids, mask, _ = tokenizer.tokenize(captions, data_cfg.max_text_length)
            batch["text_ids"] = np.asarray(ids, np.int32)  # [B, L]
            batch["text_mask"] = np.asarray(mask, bool)  # [B, L]
        if not return_labels:
            del batch["caption"]
        return batch

    return finish


def make_dataset(
    data_cfg: DataConfig,
    stage_cfg: StageDataConfig,
    tokenizer: Tokenizer | None,
    *,
    seed: int,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    num_epochs: int | None = None,
    return_labels: bool = False,
) -> grain.MapDataset:
    """The per-host batched `MapDataset` behind `make_train_iterator` (same arguments)."""
    if process_index is None or process_count is None:
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, {process_count})")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; must be >= 1")
    num_images = round(batch_size * data_cfg.image_fraction)
    if num_images and stage_cfg.kind == "tsr":
        raise ValueError("image_fraction > 0 with kind='tsr': independent images have no motion")
    if num_images and return_labels:
        raise ValueError("return_labels is for video-only eval data; set image_fraction=0")
    common = dict(
        stage=stage_cfg,
        shuffle=data_cfg.shuffle,
        num_epochs=num_epochs,
        return_labels=return_labels,
    )
    videos = _element_dataset(
        data_cfg.name, data_cfg.split, data_cfg.data_dir, seed=seed, is_image=False, **common
    )
    videos = _host_batches(videos, batch_size - num_images, process_index, process_count)
    if num_images:
        images = _element_dataset(
            data_cfg.image_name,
            data_cfg.image_split,
            data_cfg.data_dir,
            seed=seed + 7919,  # a different stream from the videos'
            is_image=True,
            **common,
        )
        images = _host_batches(images, num_images, process_index, process_count)
        n = min(len(videos), len(images))
        # Batch i = video batch i + image batch i; exact composition, still random access.
        videos = videos[:n].map_with_index(
            lambda i, vb: {k: np.concatenate([vb[k], images[i][k]]) for k in vb}
        )
    return videos.map(_batch_finisher(data_cfg, tokenizer, return_labels))


def make_train_iterator(
    data_cfg: DataConfig,
    stage_cfg: StageDataConfig,
    tokenizer: Tokenizer | None,
    *,
    seed: int,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    worker_count: int = 0,
    num_epochs: int | None = None,
    return_labels: bool = False,
    read_threads: int = 2,
    prefetch_batches: int = 4,
) -> DataIterator:
    """Per-host iterator of training batches (see the module docstring for the batch layout).

    Args:
      data_cfg: which dataset/split, text handling, image mixing.
      stage_cfg: per-stage shapes and transform.
      tokenizer: object with `tokenize(prompts, max_length) -> (ids, mask, truncated)`; may be
        None when `data_cfg.text_embeddings` is set.
      seed: shuffling and augmentation seed; the same seed gives the same batches.
      batch_size: per-host batch size (the global batch is batch_size * process_count);
        incomplete batches are dropped.
      process_index, process_count: this host's shard; default jax.process_index()/count().
      worker_count: grain worker processes (0: transform in the calling thread).
      num_epochs: None repeats forever; n stops after n passes over the split (all hosts'
        batches together; each host gets an equal share).
      return_labels: also return 'caption', 'index' and structured labels (eval only).
      read_threads: threads (per process) that each assemble whole batches.
      prefetch_batches: batches buffered ahead (per process); bounds host memory.

    Returns:
      A `DataIterator` (checkpoint it with `get_state()` / `set_state()`).
    """
    ds = make_dataset(
        data_cfg,
        stage_cfg,
        tokenizer,
        seed=seed,
        batch_size=batch_size,
        process_index=process_index,
        process_count=process_count,
        num_epochs=num_epochs,
        return_labels=return_labels,
    ).to_iter_dataset(
        # grain's defaults (16 threads, 500 buffered elements) would buffer 500 *batches* here.
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches)
    )
    if worker_count < 0:
        raise ValueError(f"worker_count={worker_count}; must be >= 0")
    if worker_count:
        # grain's worker processes read absl flags; outside an absl app they are unparsed.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return DataIterator(ds)


def dataset_size(name: str, split: str, data_dir: str | None = None) -> int:
    """Number of records of a prepared split."""
    return len(_source(name, split, data_dir))


__all__ = [
    "DataConfig",
    "DataIterator",
    "StageDataConfig",
    "dataset_size",
    "load_caption_embeddings",
    "make_dataset",
    "make_train_iterator",
    "prepare",
    "save_caption_embeddings",
    "stage_transform",
]
