"""Class and attribute names: the Visual Genome vocabularies, or a model's own files."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from detector.config import DetectorConfig

OBJECTS_FILE = "objects_vocab.txt"
ATTRIBUTES_FILE = "attributes_vocab.txt"
VG_NUM_OBJECTS = 1600
VG_NUM_ATTRIBUTES = 400


def read_vocab(path: Path | str) -> list[str]:
    """One class per line; synonyms follow commas and the first is used."""
    text = Path(path).read_text(encoding="utf-8")
    return [line.split(",")[0].strip() for line in text.splitlines() if line.strip()]


def _packaged(name: str) -> list[str]:
    return read_vocab(Path(str(resources.files("detector") / "data" / name)))


def vg_objects() -> list[str]:
    """The 1600 Visual Genome object classes of bottom-up-attention (index = class id)."""
    return _packaged(OBJECTS_FILE)


def vg_attributes() -> list[str]:
    """The 400 Visual Genome attribute classes of bottom-up-attention."""
    return _packaged(ATTRIBUTES_FILE)


def load_names(
    directory: Path, config: DetectorConfig
) -> tuple[list[str] | None, list[str] | None]:
    """Names for a checkpoint: vocab files beside it, else VG's when the counts are VG's.

    Returns ``None`` for a list that cannot be found (the model then uses generic names).
    """
    found: list[list[str] | None] = []
    for file_name, count, vg in (
        (OBJECTS_FILE, config.num_classes, VG_NUM_OBJECTS),
        (ATTRIBUTES_FILE, config.num_attributes, VG_NUM_ATTRIBUTES),
    ):
        names = None
        if (directory / file_name).is_file():
            names = read_vocab(directory / file_name)
            if len(names) != count:
                raise ValueError(
                    f"{directory / file_name} lists {len(names)} names but the detector has "
                    f"{count}; the vocabulary does not belong to this checkpoint"
                )
        elif count == vg:
            names = vg_objects() if file_name == OBJECTS_FILE else vg_attributes()
        found.append(names)
    return found[0], found[1]
