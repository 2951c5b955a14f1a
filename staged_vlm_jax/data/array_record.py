"""Converted data sets: `Example`s as a TFDS data set in array_record shards, written and read through tfds' API.

Stage 1 and 3 sets hold thousands of images spread over files and folders; a pipeline that opens them one by one
from a jsonl's paths is slow on network storage and breaks when the set is moved. ``staged-vlm data convert``
packs the rows and their image bytes into a TFDS data set (a TFDS ``data_dir`` holding one builder directory)::

    out_dir/
      data_errors.jsonl                         # rows the conversion dropped, and why (when any were)
      staged_vlm_rows/1.0.0/                    # what tfds.builder_from_directory opens
        dataset_info.json                       # name, version, the "train" split and its shard lengths
        features.json                           # the FeaturesDict below
        staged_vlm_rows-train.array_record-00000-of-00002
        staged_vlm_rows-train.array_record-00001-of-00002

so ``tfds.data_source("staged_vlm_rows", data_dir=out_dir, split="train")`` or
``tfds.builder_from_directory(out_dir / "staged_vlm_rows/1.0.0")`` reads it, and Grain takes that random-access
source as it is (``grain.MapDataset.source(data_source(out_dir))``). `write_array_record` prepares a
``tfds.core.GeneratorBasedBuilder`` with ``file_format="array_record"``, so tfds writes the shards and the metadata
(into a temporary folder it renames when done, so an interrupted conversion leaves no builder directory).

Neither writing nor reading needs TensorFlow: tfds serialises and parses ``tf.train.Example`` protos itself, and
``tfds.features.Image`` stores the bytes it is given (only encoding a pixel array would call TensorFlow, and images
are passed encoded). tfds' ``store_as_tfds_dataset`` is not used because it tests its input against
``tf.data.Dataset``, which imports TensorFlow.

Features: ``id``, ``problem``, ``answer``, ``capability`` (``Text``); ``pass_rate`` (float64 scalar stored as its
8 raw bytes, NaN for a row without one: a ``tf.train.Example`` float is float32, and a float32 pass rate would not
round-trip, 0.3 -> 0.30000001192…); ``images`` (``Sequence`` of ``Image``) and ``image_names`` (``Sequence`` of
``Text``: where each image came from, for error messages). A PNG or JPEG image is stored as its original bytes, so
decoding gives the same pixels without a second lossy encode; any other format is decoded and stored as a PNG of
its RGB pixels (what `ImageRef.load` returns for it anyway), since tfds' ``Image`` holds PNG or JPEG. Readers here
leave the images encoded (`ImageRef` bytes, decoded when the pipeline loads them); tfds' own decoding gives each
image's pixels as Pillow reads them.

`read_rows` reads such a directory (or its builder directory): this module registers it under the empty
extension, so a directory is read once the module is imported.
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from PIL import Image

from staged_vlm_jax.data.schema import DataError, Example, ImageRef, RowLocation
from staged_vlm_jax.data.sources import ReadOptions, RowFormat, register_format
from staged_vlm_jax.paths import PathLike, as_path

DATASET_NAME = "staged_vlm_rows"
SPLIT = "train"
VERSION = "1.0.0"
_TEXT_FIELDS = ("id", "problem", "answer", "capability")
FEATURES = tfds.features.FeaturesDict(
    {
        **{name: tfds.features.Text() for name in _TEXT_FIELDS},
        "pass_rate": tfds.features.Tensor(shape=(), dtype=np.float64, encoding=tfds.features.Encoding.BYTES),
        "images": tfds.features.Sequence(tfds.features.Image(shape=(None, None, 3))),
        "image_names": tfds.features.Sequence(tfds.features.Text()),
    }
)
_READ_CHUNK_RECORDS = 256
_LOSSLESS_PREFIXES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")  # PNG, JPEG


class _KeepEncoded(tfds.decode.SkipDecoding):
    """Leaves the ``images`` bytes encoded. tfds 4.9's ``SkipDecoding`` lacks the NumPy batch method that a
    ``Sequence`` feature calls, so it is added here."""

    def decode_batch_example_np(self, serialized_example: np.ndarray) -> np.ndarray:
        return serialized_example


class _RowsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """The tfds builder that writes ``examples`` in order (shuffling disabled: sequential and difficulty curricula
    read the file order) as the ``train`` split."""

    name = DATASET_NAME
    VERSION = tfds.core.Version(VERSION)

    def __init__(self, examples: Sequence[Example], *, data_dir: epath.Path) -> None:
        self._examples = examples
        super().__init__(data_dir=data_dir, file_format="array_record")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Validated EasyR1-schema rows and their images (staged_vlm_jax.data.array_record).",
            features=FEATURES,
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        del dl_manager  # nothing to download
        return {SPLIT: self._generate_examples()}

    def _generate_examples(self) -> Iterator[tuple[int, dict[str, Any]]]:
        for index, example in enumerate(self._examples):
            yield index, _features(example)


def _image_bytes(image: ImageRef) -> bytes:
    """The image as an encoded file: PNG / JPEG bytes as they are, anything else re-encoded as PNG (lossless)."""
    data = image.source if isinstance(image.source, bytes) else image.source.read_bytes()
    if data.startswith(_LOSSLESS_PREFIXES):
        return data
    encoded = io.BytesIO()
    Image.fromarray(image.load()).save(encoded, format="PNG")
    return encoded.getvalue()


def _features(example: Example) -> dict[str, Any]:
    """``example`` as a dict of `FEATURES`, which tfds encodes."""
    return {
        **{name: getattr(example, name) for name in _TEXT_FIELDS},
        "pass_rate": math.nan if example.pass_rate is None else float(example.pass_rate),
        "images": [_image_bytes(image) for image in example.images],
        "image_names": [image.name for image in example.images],
    }


def check_empty(out_dir: PathLike) -> epath.Path:
    """``out_dir`` as a path; raises FileExistsError unless it is absent or empty (tfds would silently reuse an
    earlier conversion's data set found there)."""
    out_dir = as_path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} is not an empty directory; convert into a new one")
    return out_dir


def write_array_record(
    examples: Sequence[Example], out_dir: PathLike, *, shard_size: int = 1024
) -> tfds.core.DatasetBuilder:
    """Write ``examples`` in order as a TFDS data set in a new ``out_dir``, in ``ceil(len / shard_size)`` shards.

    Returns the prepared builder (``.data_dir``, ``.info.splits["train"]``). Images are read but not decoded
    unless they need re-encoding, so give examples whose images were verified (`read_rows` with
    ``verify_images=True``, the default). tfds' progress messages go to stderr.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    if not examples:
        raise ValueError("no examples to write")
    builder = _RowsBuilder(examples, data_dir=check_empty(out_dir))
    config = tfds.download.DownloadConfig(num_shards=math.ceil(len(examples) / shard_size))
    # tfds prints its "Downloading and preparing" lines on stdout, which carries the CLI's summary; there is no
    # download, so tfds' download folder is a temporary one rather than out_dir/downloads.
    with tempfile.TemporaryDirectory() as downloads, contextlib.redirect_stdout(sys.stderr):
        builder.download_and_prepare(download_dir=downloads, download_config=config)
    return builder


def _builder(path: epath.Path) -> tfds.core.DatasetBuilder:
    """The builder of a converted directory (``path`` being `write_array_record`'s ``out_dir`` or its builder
    directory), once its features show the records are ours; `DataError` naming ``path`` otherwise."""
    builder_dir = path if (path / "dataset_info.json").exists() else path / DATASET_NAME / VERSION
    try:
        builder = tfds.builder_from_directory(builder_dir)
    except (OSError, ValueError, json_format.ParseError) as error:
        raise DataError(
            path,
            "file",
            f"not a converted data set (`staged-vlm data convert` writes a TFDS data_dir holding {DATASET_NAME}/"
            f"{VERSION}: {error!r}); files are read by extension (.jsonl, .json, .parquet, .tsv)",
            reason="unreadable_file",
        ) from error
    if SPLIT not in builder.info.splits or builder.info.features.to_json() != FEATURES.to_json():
        raise DataError(
            path,
            "file",
            f"not the {SPLIT!r} split and features.json that `staged-vlm data convert` writes",
            reason="unreadable_file",
        )
    return builder


def _encoded_source(builder: tfds.core.DatasetBuilder) -> Sequence[dict[str, Any]]:
    return builder.as_data_source(split=SPLIT, decoders={"images": _KeepEncoded()})


def data_source(out_dir: PathLike) -> Sequence[dict[str, Any]]:
    """A converted set's rows as tfds' random-access source (``len``, ``[i]``, ``__getitems__``), images left
    encoded: what ``grain.MapDataset.source`` takes; `example_from_record` makes each row an `Example`."""
    return _encoded_source(_builder(as_path(out_dir)))


def _records(path: epath.Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(0-based index over all shards, decoded row): the index is the one `data_source` uses. Rows are read in
    chunks within each shard, so a shard that is missing, corrupt or shorter than dataset_info.json says is named."""
    builder = _builder(path)
    source, split = _encoded_source(builder), builder.info.splits[SPLIT]
    start = 0
    for shard, length in zip(split.filepaths, split.shard_lengths, strict=True):
        for chunk in range(start, start + length, _READ_CHUNK_RECORDS):
            rows = range(chunk, min(chunk + _READ_CHUNK_RECORDS, start + length))
            try:
                records = source.__getitems__(rows)
            except (RuntimeError, IndexError, DecodeError) as error:  # array_record's reader raises RuntimeError
                raise DataError(
                    shard,
                    "file",
                    f"cannot read records {rows.start}-{rows.stop - 1}: {error}",
                    reason="unreadable_file",
                ) from error
            yield from zip(rows, records, strict=True)
        start += length


def example_from_record(record: dict[str, Any], location: RowLocation) -> Example:
    """One row of `data_source` -> `Example`, its images lazy `ImageRef` bytes."""
    text = {name: record[name].decode() for name in _TEXT_FIELDS}
    pass_rate = float(record["pass_rate"])
    images = tuple(
        ImageRef(bytes(data), location, f"images[{index}]", name.decode())
        for index, (data, name) in enumerate(zip(record["images"], record["image_names"], strict=True))
    )
    return Example(**text, images=images, pass_rate=None if math.isnan(pass_rate) else pass_rate, location=location)


def _build(record: dict[str, Any], location: RowLocation, options: ReadOptions) -> Example:
    example = example_from_record(record, location)
    if example.capability != options.capability:
        raise DataError(
            location,
            "capability",
            f"the data set holds {example.capability!r} rows, read as {options.capability!r}",
            reason="capability_mismatch",
        )
    return example


# A directory has no extension: `read_rows` looks it up under "".
register_format(RowFormat(records=_records, build=_build), "")
