"""Which file names make a feature file: the one list that every command checks a name against.

Standard library only: the commands check names before they import anything heavy.
"""

from __future__ import annotations

TSV_SUFFIXES: tuple[str, ...] = (".tsv",)
H5_SUFFIXES: tuple[str, ...] = (".h5", ".hdf5")

PARQUET_SUFFIXES: tuple[str, ...] = (".parquet",)

#: The single files ``extract_features --out`` writes record by record, and so what
#: ``--boxes-from`` and ``compare``'s reference read as one of ours or LXMERT's.
OUTPUT_SUFFIXES: tuple[str, ...] = TSV_SUFFIXES + H5_SUFFIXES

#: Every single-file feature format read or written (``convert``, ``FeatureStore``); the
#: folder formats (npz-dir, UNITER lmdb) are told by their contents.
FILE_SUFFIXES: tuple[str, ...] = (*OUTPUT_SUFFIXES, *PARQUET_SUFFIXES)

#: Formats ``extract_features`` writes through a TSV and converts at the end
#: (:mod:`pipeline.extract.staged`); npz-dir and lmdb are folders.
STAGED_FORMATS: tuple[str, ...] = ("npz-dir", "lmdb", "parquet")
#: Every ``extract_features --format``.
OUTPUT_FORMATS: tuple[str, ...] = ("tsv", "h5", *STAGED_FORMATS)
