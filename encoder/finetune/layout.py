"""The fine-tuning run folder's layout, and the rule that a run writes only its own folder.

Imports no torch or transformers: ``lxmert-finetune train`` checks its ``--out`` with these
before either is loaded, so a usage error is said at once (issue 29).
:mod:`encoder.finetune.run` and :mod:`encoder.finetune.model` re-export the names.
"""

from __future__ import annotations

from pathlib import Path

from weights.ownership import check_folder_is_ours

#: The file of an output directory that records the recipe, the command and the history.
FINETUNE_FILE = "finetune.json"
#: The resume checkpoint inside the run's folder.
CHECKPOINT = Path("training") / "last.pt"
#: The best epoch's model inside the run's folder (vqa.py's ``BEST.pth``).
BEST_DIR = "best"
#: The last epoch's model inside the run's folder (vqa.py's ``LAST.pth``).
LAST_DIR = "last"
#: What makes a folder a model (``save_pretrained``'s file).
MODEL_CONFIG = "config.json"


def run_model(folder: Path) -> Path:
    """The model a folder means. A fine-tuning run's folder means its best model,
    ``folder/best/``; a model folder, or a run written before ``best/`` existed (whose best
    model is the folder itself), means itself. So ``answer --encoder RUN``, ``evaluate RUN``,
    ``export RUN`` and ``--from RUN`` take the run's best model."""
    best = folder / BEST_DIR
    if not (folder / MODEL_CONFIG).is_file() and (best / MODEL_CONFIG).is_file():
        return best
    return folder


def check_out_is_ours(out: Path, *, source: str | Path | None = None, flag: str = "--out") -> None:
    """``out`` must be new, empty, or a folder an earlier run wrote (it holds our
    :data:`FINETUNE_FILE` or :data:`CHECKPOINT`): a model folder of someone else's, the
    starting model ``source`` included, is never written over.

    Raises:
        weights.ownership.NotOursError: (a ``ValueError``; exit 2 in a command) naming ``flag``.
    """
    inputs = [("the starting model (--from)", Path(source))] if source is not None else []
    check_folder_is_ours(out, markers=(FINETUNE_FILE, CHECKPOINT), flag=flag, inputs=inputs)
