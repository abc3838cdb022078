"""Every feature-file format by name: how to write it, read it in order, read it by id, and
what it cannot hold. ``docs/formats.md`` is the user's page of the same table.

Names: ``tsv``, ``h5``, ``ban-h5``, ``ban-h5-36``, ``npz-dir``, ``lmdb``, ``lmdb-msgpack``,
``parquet``. :func:`detect_format` tells an existing file or folder's format from its name and
content, never from its manifest (a foreign file has none).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import cast

import h5py

from detector.structures import RegionFeatures
from pipeline.features.formats import ban_h5, lmdb_uniter, npz_dir, parquet
from pipeline.features.formats.common import FeatureDtype, RecordPart, WriteOptions
from pipeline.features.formats.h5 import H5_FORMAT_NAME, iter_h5, write_h5
from pipeline.features.formats.tsv import encode_tsv_line, iter_tsv, repair_tsv, tsv_line_id
from pipeline.features.suffixes import FILE_SUFFIXES, H5_SUFFIXES, PARQUET_SUFFIXES, TSV_SUFFIXES
from weights.defaults import extra_install_hint

Writer = Callable[[Path, Iterable[RegionFeatures], WriteOptions], int]


@dataclass(frozen=True)
class FormatSpec:
    """One format.

    Attributes:
        name: what ``--to`` names it.
        folder: the output is a folder (``npz-dir``, ``lmdb``), else a file.
        suffixes: file names it is recognised by (empty for folders).
        consumer: the project, file and function that read it.
        loses: the fields of a record it does not hold, and how reading fills them.
        feature_dtypes: stored precisions it allows (the first is the default).
        write: writes records to a new path (a folder is created by the writer); for a
            format with ``resume``, appends to what ``resume`` kept of a partial output.
        iterate: records of an existing path in order.
        open_part: random access for :class:`pipeline.features.store.FeatureStore` (None: the
        store's
            own TSV/HDF5 parts).
        companions: files written beside the output (ban-h5's id table).
        requires: modules it needs (the ``[formats]`` extra).
        resume: repairs the partial output an interrupted conversion left and returns the
            ids it holds complete (``write`` then appends the rest); None for a format that
            cannot be appended to, which a resumed conversion writes again from the start.
    """

    name: str
    folder: bool
    suffixes: tuple[str, ...]
    consumer: str
    loses: str
    feature_dtypes: tuple[str, ...]
    write: Writer
    iterate: Callable[[Path], Iterator[RegionFeatures]]
    open_part: Callable[[Path], RecordPart] | None = None
    companions: Callable[[Path], tuple[Path, ...]] = lambda path: ()
    requires: tuple[str, ...] = ()
    resume: Callable[[Path], frozenset[str]] | None = None

    def missing_modules(self) -> tuple[str, ...]:
        """The modules of :attr:`requires` that are not installed."""
        return tuple(name for name in self.requires if importlib.util.find_spec(name) is None)

    def check_installed(self, flag: str) -> None:
        """``ValueError`` naming the missing modules and the extra, for ``flag`` (the flag
        that chose this format: ``--to``, ``--format``)."""
        missing = self.missing_modules()
        if missing:
            raise ValueError(
                f"{flag} {self.name} needs {', '.join(missing)}: {extra_install_hint('formats')}"
            )

    def stored_dtype(self, given: str | None) -> FeatureDtype:
        """The features' stored precision for ``--feature-dtype given`` (None: the format's
        first); ``ValueError`` naming the ones it holds."""
        dtype = given or self.feature_dtypes[0]
        if dtype not in self.feature_dtypes:
            raise ValueError(
                f"--feature-dtype {dtype}: a {self.name} output stores "
                + " or ".join(self.feature_dtypes)
            )
        return cast(FeatureDtype, dtype)


def _write_tsv(path: Path, regions: Iterable[RegionFeatures], options: WriteOptions) -> int:
    del options  # LXMERT's load_obj_tsv reads float32 only
    count = 0
    with open(path, "ab") as stream:  # a new file, or what _resume_tsv kept
        for record in regions:
            stream.write(encode_tsv_line(record))
            # Each line reaches the OS whole before the next is read, so a kill cuts at most
            # the last one (no fsync: a partial that an OS crash damaged in the middle is
            # refused by the resume, and --overwrite starts again).
            stream.flush()
            count += 1
    return count


def _resume_tsv(path: Path) -> frozenset[str]:
    """The complete records of a partial TSV, an incomplete last line cut away."""
    return frozenset(repair_tsv(path)) if path.exists() else frozenset()


def _write_h5(path: Path, regions: Iterable[RegionFeatures], options: WriteOptions) -> int:
    del options  # our HDF5 layout is float32
    return write_h5(path, regions)


FORMATS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        FormatSpec(
            name="tsv",
            folder=False,
            suffixes=TSV_SUFFIXES,
            consumer="airsplay/lxmert src/utils.py load_obj_tsv",
            loses="nothing",
            feature_dtypes=("float32",),
            write=_write_tsv,
            iterate=iter_tsv,
            resume=_resume_tsv,
        ),
        FormatSpec(
            name="h5",
            folder=False,
            suffixes=H5_SUFFIXES,
            consumer="this tool (pipeline.features.store.FeatureStore)",
            loses="nothing",
            feature_dtypes=("float32",),
            write=_write_h5,
            iterate=iter_h5,
        ),
        FormatSpec(
            name="ban-h5",
            folder=False,
            suffixes=(".hdf5", ".h5"),
            consumer="jnhwkim/ban-vqa dataset.py _load_dataset / VQAFeatureDataset "
            "(written by tools/adaptive_detection_features_converter.py)",
            loses="objects_id, attrs_id (read back as -1), objects_conf, attrs_conf (0), "
            "img_h/img_w (recovered from boxes and spatial_features); ids must be ints",
            feature_dtypes=("float32", "float16"),
            write=partial(ban_h5.write_ban_h5, fixed=False),
            iterate=ban_h5.iter_ban_h5,
            open_part=ban_h5.BanH5Part,
            companions=ban_h5.companions,
        ),
        FormatSpec(
            name="ban-h5-36",
            folder=False,
            suffixes=(".hdf5", ".h5"),
            consumer="hengyuan-hu/bottom-up-attention-vqa dataset.py VQAFeatureDataset "
            "(written by tools/detection_features_converter.py)",
            loses="as ban-h5; every image must have exactly 36 boxes",
            feature_dtypes=("float32", "float16"),
            write=partial(ban_h5.write_ban_h5, fixed=True),
            iterate=ban_h5.iter_ban_h5,
            open_part=ban_h5.BanH5Part,
            companions=ban_h5.companions,
        ),
        FormatSpec(
            name="npz-dir",
            folder=True,
            suffixes=(),
            consumer="MILVLG/bottom-up-attention.pytorch utils/extract_utils.py "
            "save_roi_features (read with np.load by MCAN/OpenVQA-style loaders)",
            loses="nothing (class ids are stored +1, MILVLG's numbering)",
            feature_dtypes=("float32", "float16"),
            write=npz_dir.write_npz_dir,
            iterate=npz_dir.iter_npz_dir,
            open_part=npz_dir.NpzDirPart,
            resume=npz_dir.resume_npz_dir,
        ),
        FormatSpec(
            name="lmdb",
            folder=True,
            suffixes=(),
            consumer="ChenRocks/UNITER data/data.py DetectFeatLmdb (compress=True, its "
            "default; written by scripts/convert_imgdir.py --compress)",
            loses="img_h/img_w (read back as 1 x 1 with normalised boxes), float32 precision "
            "(every float array is float16)",
            feature_dtypes=("float16",),
            write=partial(lmdb_uniter.write_lmdb, compressed=True),
            iterate=lmdb_uniter.iter_lmdb,
            open_part=lmdb_uniter.LmdbPart,
            requires=("lmdb", "msgpack", "msgpack_numpy"),
        ),
        FormatSpec(
            name="lmdb-msgpack",
            folder=True,
            suffixes=(),
            consumer="ChenRocks/UNITER data/data.py DetectFeatLmdb (compress=False; written "
            "by scripts/convert_imgdir.py without --compress)",
            loses="as lmdb",
            feature_dtypes=("float16",),
            write=partial(lmdb_uniter.write_lmdb, compressed=False),
            iterate=lmdb_uniter.iter_lmdb,
            open_part=lmdb_uniter.LmdbPart,
            requires=("lmdb", "msgpack", "msgpack_numpy"),
        ),
        FormatSpec(
            name="parquet",
            folder=False,
            suffixes=PARQUET_SUFFIXES,
            consumer="pyarrow.parquet.read_table; Hugging Face datasets "
            'load_dataset("parquet", data_files=...)',
            loses="nothing",
            feature_dtypes=("float32", "float16"),
            write=parquet.write_parquet,
            iterate=parquet.iter_parquet,
            open_part=parquet.ParquetPart,
            requires=("pyarrow",),
        ),
    )
}

#: Formats that hold every field of a record exactly (TSV -> it -> TSV is byte-identical).
LOSSLESS = ("tsv", "h5", "npz-dir", "parquet")


def _h5_kind(path: Path) -> str:
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") == H5_FORMAT_NAME:
            return "h5"
        if "image_features" in f and "image_bb" in f:
            return "ban-h5-36" if f["image_bb"].ndim == 3 else "ban-h5"
    raise ValueError(
        f"{path}: an HDF5 file of an unknown layout (neither this tool's nor ban-vqa's)"
    )


def detect_format(path: str | Path) -> str:
    """The format of an existing file or folder, from its suffix and content.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a file or folder of no known layout, naming what was looked for.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        if suffix and suffix not in FILE_SUFFIXES:
            raise ValueError(
                f"{path}: unknown format (and no such file); feature files are *.tsv, "
                "*.h5/*.hdf5, *.parquet, or folders (npz-dir, UNITER lmdb)"
            )
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        if lmdb_uniter.is_lmdb_dir(path):
            _, compressed = lmdb_uniter.find_db(path)
            return "lmdb" if compressed else "lmdb-msgpack"
        if npz_dir.is_npz_dir(path):
            return "npz-dir"
        raise ValueError(
            f"{path}: a folder with neither UNITER's image database nor .npz files in it"
        )
    if h5py.is_hdf5(path):
        return _h5_kind(path)
    with open(path, "rb") as stream:
        head = stream.read(4)
        stream.seek(0)
        first = stream.readline(1 << 26)
    if head == b"PAR1":
        return "parquet"
    if suffix == ".tsv" or tsv_line_id(first) is not None:
        return "tsv"
    raise ValueError(
        f"{path}: unknown format; feature files are obj36 TSV, HDF5 (ours or ban-vqa's), "
        "parquet, or folders (npz-dir, UNITER lmdb)"
    )


def get_format(name: str) -> FormatSpec:
    """The format named ``name``; ``ValueError`` listing the names."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r}; one of {', '.join(FORMATS)}") from None


def iter_records(path: str | Path) -> Iterator[RegionFeatures]:
    """Records of a feature file or folder of any format, in its order."""
    path = Path(path)
    return get_format(detect_format(path)).iterate(path)


def store_format(path: str | Path) -> str:
    """Which reader :class:`pipeline.features.store.FeatureStore` opens ``path`` with: ``tsv`` for a
    ``*.tsv`` name (its own indexed reader, whatever the content), ``h5`` for our HDF5 and any
    ``*.h5``/``*.hdf5`` name that is not ban-vqa's (the store's reader names the problem), else
    the format :func:`detect_format` finds.

    Raises:
        FileNotFoundError, ValueError: as :func:`detect_format`, for other names.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in TSV_SUFFIXES and not path.is_dir():
        return "tsv"
    if suffix in H5_SUFFIXES and not path.is_dir():
        if path.is_file() and h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                if f.attrs.get("format") != H5_FORMAT_NAME and "image_features" in f:
                    return "ban-h5-36" if f["image_bb"].ndim == 3 else "ban-h5"
        return "h5"
    return detect_format(path)


def open_part(path: str | Path, fmt: str) -> RecordPart:
    """Random access to ``path`` in format ``fmt`` (not ``tsv``/``h5``: the store's own)."""
    spec = get_format(fmt)
    if spec.open_part is None:
        raise ValueError(f"{path}: {fmt} is read by the feature store itself")
    return spec.open_part(Path(path))
