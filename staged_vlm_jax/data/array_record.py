"""Converted data sets: `Example`s as array_record shards in a TFDS-layout directory, and the reader back.

Stage 1 and 3 sets hold thousands of images spread over files and folders; a pipeline that opens them one by one
from a jsonl's paths is slow on network storage and breaks when the set is moved. ``staged-vlm data convert``
packs the rows and their image bytes into a few array_record files (random access by index, what Grain's
``ArrayRecordDataSource`` reads), laid out as a TFDS builder directory::

    out_dir/
      dataset_info.json                                   # TFDS DatasetInfo JSON: name, version, splits, shards
      features.json                                       # TFDS FeaturesDict: the record's features (below)
      staged_vlm_rows-train.array_record-00000-of-00002   # TFDS shard naming
      staged_vlm_rows-train.array_record-00001-of-00002

Format choice: each record is a serialised ``tf.train.Example``, and ``features.json`` is the TFDS
``FeaturesDict`` that describes it, so the directory is a real TFDS data set:
``tfds.builder_from_directory(out_dir).as_data_source()["train"][i]`` reads it, and TFDS 4.9 does that without
TensorFlow. Every feature is a byte-string list (``Text``, or a ``Sequence`` of ``Text`` / string ``Tensor``), so
the few protobuf wire-format lines here encode and decode the records: neither TensorFlow nor
tensorflow-datasets (and its dozen extra dependencies) is needed to write or read. ``tfds.features.Image`` is
not used, since encoding and decoding it needs TensorFlow; images are stored as encoded files instead.
``pass_rate`` is ``Text`` holding its JSON (``"null"`` or the number): ``tf.train.Example`` has only float32, and
a float32 pass rate would not round-trip (0.3 -> 0.30000001192…).

Features: ``id``, ``problem``, ``answer``, ``capability``, ``pass_rate`` (``Text``), ``images`` (``Sequence`` of
string ``Tensor``: encoded image files) and ``image_names`` (``Sequence`` of ``Text``: where each image came from,
for error messages). A PNG or JPEG image is stored as its original bytes, so decoding gives the same pixels
without a second lossy encode; any other format is decoded and stored as a PNG of its RGB pixels, which is what
`ImageRef.load` returns for it anyway. Grain reads the shards directly:
``grain.sources.ArrayRecordDataSource(shard_paths(out_dir))``, each record made an `Example` by
`example_from_record`.

`read_rows` reads such a directory: this module registers it under the empty extension, so a directory whose
name has no suffix (``tfds_dir``) is read once the module is imported.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from PIL import Image

from staged_vlm_jax.data.schema import DataError, Example, ImageRef, RowLocation
from staged_vlm_jax.data.sources import ReadOptions, RowFormat, register_format

DATASET_NAME = "staged_vlm_rows"
SPLIT = "train"
VERSION = "1.0.0"
_TEXT_FIELDS = ("id", "problem", "answer", "capability", "pass_rate")
_TFDS_CLASS = "tensorflow_datasets.core.features."
_TEXT = {"pythonClassName": _TFDS_CLASS + "text_feature.Text", "text": {}}
_BYTES = {
    "pythonClassName": _TFDS_CLASS + "tensor_feature.Tensor",
    "tensor": {"dtype": "string", "encoding": "none", "shape": {}},
}


def _sequence(feature: dict[str, Any]) -> dict[str, Any]:
    return {
        "pythonClassName": _TFDS_CLASS + "sequence_feature.Sequence",
        "sequence": {"feature": feature, "length": "-1"},
    }


# features.json as TFDS writes it (FeaturesDict.save_config); the reader requires exactly this.
FEATURES = {
    "featuresDict": {
        "features": {
            **{name: _TEXT for name in _TEXT_FIELDS},
            "images": _sequence(_BYTES),
            "image_names": _sequence(_TEXT),
        }
    },
    "pythonClassName": _TFDS_CLASS + "features_dict.FeaturesDict",
}
# TFDS's shard file naming, as it writes it into dataset_info.json.
FILEPATH_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
# One record per chunk, as TFDS writes array_record, so reading record i decodes only record i (random access).
_WRITER_OPTIONS = "group_size:1"
_READ_CHUNK_RECORDS = 256
_LOSSLESS_PREFIXES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")  # PNG, JPEG


def _image_bytes(image: ImageRef) -> bytes:
    """The image as an encoded file: PNG / JPEG bytes as they are, anything else re-encoded as PNG (lossless)."""
    data = image.source if isinstance(image.source, bytes) else image.source.read_bytes()
    if data.startswith(_LOSSLESS_PREFIXES):
        return data
    encoded = io.BytesIO()
    Image.fromarray(image.load()).save(encoded, format="PNG")
    return encoded.getvalue()


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2): tag, length, payload."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _record(example: Example) -> bytes:
    """``tf.train.Example{features{feature{key: Feature{bytes_list{value...}}}}}`` in protobuf wire format."""
    features = {
        "id": [example.id.encode()],
        "problem": [example.problem.encode()],
        "answer": [example.answer.encode()],
        "capability": [example.capability.encode()],
        "pass_rate": [json.dumps(example.pass_rate).encode()],
        "images": [_image_bytes(image) for image in example.images],
        "image_names": [image.name.encode() for image in example.images],
    }
    entries = (
        _field(1, key.encode()) + _field(2, _field(1, b"".join(_field(1, value) for value in values)))
        for key, values in features.items()
    )
    return _field(1, b"".join(_field(1, entry) for entry in entries))


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data):
            raise ValueError("truncated varint")
        byte = data[position]
        value |= (byte & 0x7F) << shift
        shift, position = shift + 7, position + 1
        if byte < 0x80:
            return value, position


def _fields(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(field number, payload) of a message whose fields are all length-delimited; ValueError otherwise."""
    position = 0
    while position < len(data):
        tag, position = _read_varint(data, position)
        length, position = _read_varint(data, position)
        if tag & 7 != 2 or position + length > len(data):
            raise ValueError(f"field with tag {tag} is not length-delimited or is truncated")
        yield tag >> 3, data[position : position + length]
        position += length


def _decode(record: bytes) -> dict[str, list[bytes]]:
    """The feature map of a serialised ``tf.train.Example`` whose features are all byte lists."""
    features: dict[str, list[bytes]] = {}
    for _, entries in _fields(record):
        for _, entry in _fields(entries):
            parts = dict(_fields(entry))
            kinds = dict(_fields(parts[2]))
            if set(kinds) != {1}:
                raise ValueError(f"feature {parts[1]!r} is not a bytes_list")
            features[parts[1].decode()] = [value for _, value in _fields(kinds[1])]
    return features


def check_empty(out_dir: str | Path) -> Path:
    """``out_dir`` as a Path; raises FileExistsError unless it is absent or empty (no shard of an earlier
    conversion may be mixed in)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} is not an empty directory; convert into a new one")
    return out_dir


def write_array_record(examples: Iterable[Example], out_dir: str | Path, *, shard_size: int = 1024) -> Path:
    """Write ``examples`` in order, ``shard_size`` per array_record shard, to a new TFDS-layout ``out_dir``.

    Returns ``out_dir``. Images are read but not decoded unless they need re-encoding, so give examples whose
    images were verified (`read_rows` with ``verify_images=True``, the default). ``out_dir`` must be empty or
    absent, so no shard of an earlier conversion is mixed in; ``dataset_info.json`` is written last, so a
    directory without it is an interrupted conversion.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    out_dir = check_empty(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The shard count is known only at the end, so shards are written under temporary names and renamed.
    lengths: list[int] = []
    writer: ArrayRecordWriter | None = None
    for example in examples:
        if writer is None:
            writer = ArrayRecordWriter(str(out_dir / f"shard-{len(lengths):05d}.tmp"), _WRITER_OPTIONS)
            lengths.append(0)
        writer.write(_record(example))
        lengths[-1] += 1
        if lengths[-1] == shard_size:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()
    paths = _shard_paths(out_dir, DATASET_NAME, len(lengths))
    for index, path in enumerate(paths):
        (out_dir / f"shard-{index:05d}.tmp").rename(path)
    (out_dir / "features.json").write_text(json.dumps(FEATURES, indent=4) + "\n", encoding="utf-8")
    info = {
        "name": DATASET_NAME,
        "version": VERSION,
        "description": "Validated EasyR1-schema rows and their images (staged_vlm_jax.data.array_record).",
        "fileFormat": "array_record",
        # TFDS's DatasetInfo JSON writes int64 fields as strings.
        "splits": [
            {
                "name": SPLIT,
                "numBytes": str(sum(path.stat().st_size for path in paths)),
                "shardLengths": [str(length) for length in lengths],
                "filepathTemplate": FILEPATH_TEMPLATE,
            }
        ],
    }
    (out_dir / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out_dir


def _split(out_dir: Path) -> tuple[str, list[int]]:
    """(data set name, shard lengths) from ``dataset_info.json``, once ``features.json`` shows the records are ours."""
    try:
        info = json.loads((out_dir / "dataset_info.json").read_text(encoding="utf-8"))
        features = json.loads((out_dir / "features.json").read_text(encoding="utf-8"))
        (split,) = (split for split in info["splits"] if split["name"] == SPLIT)
        lengths = [int(length) for length in split["shardLengths"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(
            out_dir,
            "file",
            f"not a converted data set directory (dataset_info.json with a {SPLIT!r} split, features.json: {error!r});"
            " files are read by extension (.jsonl, .json, .parquet, .tsv)",
            reason="unreadable_file",
        ) from error
    if features != FEATURES:
        raise DataError(
            out_dir, "file", "features.json is not the one `staged-vlm data convert` writes", reason="unreadable_file"
        )
    return info["name"], lengths


def _shard_paths(out_dir: Path, name: str, count: int) -> list[Path]:
    return [out_dir / f"{name}-{SPLIT}.array_record-{index:05d}-of-{count:05d}" for index in range(count)]


def shard_paths(out_dir: str | Path) -> list[Path]:
    """A converted directory's shard files in record order (what ``grain.sources.ArrayRecordDataSource`` takes)."""
    name, lengths = _split(Path(out_dir))
    return _shard_paths(Path(out_dir), name, len(lengths))


def _records(out_dir: Path) -> Iterator[tuple[int, bytes]]:
    """(0-based index over all shards, raw record): the index is the one Grain's data source uses."""
    name, lengths = _split(out_dir)
    row = 0
    for path, length in zip(_shard_paths(out_dir, name, len(lengths)), lengths, strict=True):
        reader = ArrayRecordReader(str(path))
        # A missing or corrupt shard opens as a reader that is not ok (and that raises when closed).
        if not reader.ok():
            raise DataError(path, "file", "missing, or not an array_record file", reason="unreadable_file")
        try:
            if reader.num_records() != length:
                raise DataError(
                    path,
                    "file",
                    f"holds {reader.num_records()} records, dataset_info.json says {length}",
                    reason="unreadable_file",
                )
            for start in range(0, length, _READ_CHUNK_RECORDS):
                for record in reader.read(start, min(start + _READ_CHUNK_RECORDS, length)):
                    yield row, record
                    row += 1
        finally:
            reader.close()


def example_from_record(record: bytes, location: RowLocation) -> Example:
    """One raw record (from `_records` or a Grain data source) -> `Example`, its images lazy `ImageRef` bytes."""
    try:
        features = _decode(record)
        text = {name: value.decode() for name in _TEXT_FIELDS for (value,) in [features[name]]}
        pass_rate = json.loads(text["pass_rate"])
        images = tuple(
            ImageRef(data, location, f"images[{index}]", name.decode())
            for index, (data, name) in enumerate(zip(features["images"], features["image_names"], strict=True))
        )
    except (ValueError, KeyError) as error:
        raise DataError(location, "row", f"not a valid record ({error!r})", reason="malformed_row") from error
    return Example(
        id=text["id"],
        problem=text["problem"],
        answer=text["answer"],
        images=images,
        capability=text["capability"],
        pass_rate=pass_rate,
        location=location,
    )


def _build(record: bytes, location: RowLocation, options: ReadOptions) -> Example:
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
