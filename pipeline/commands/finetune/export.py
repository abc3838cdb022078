"""``lxmert-finetune export``: a model in the original LXMERT's file layout, so that work goes
back to airsplay/lxmert's code.

    lxmert-finetune export RUN --format lxmert-original OUT.pth [--data-parallel]

``RUN`` is a ``train --out`` folder, another ``save_pretrained`` folder or a registry name. A QA
model becomes a ``VQAModel``/``GQAModel`` state dict (``lxrt_encoder.model.bert.*``,
``logit_fc.*``; its ``--load``), an NLVR2 model an ``NLVR2Model`` one, a pretraining model
``model_LXRT.pth``'s layout (its ``--loadLXMERTQA``). Beside it: a QA model's answers, which
the original keeps apart, in ``OUT.label2ans.json`` (a list in label order, as LXMERT's
``trainval_label2ans.json``), and the model's config in ``OUT.config.json`` (the head count no
tensor holds). Loading ``OUT.pth`` anywhere reads both. Nothing existing is replaced.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.errors import EXIT_OK, UsageError
from weights.command import Command

PROG = "lxmert-finetune export"
FORMATS = ("lxmert-original",)


def build_export_parser() -> argparse.ArgumentParser:
    """Flags of ``lxmert-finetune export``."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="write a model in the original LXMERT's checkpoint layout"
    )
    parser.add_argument("model", metavar="RUN", help="a train --out folder, a folder or a name")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("out", type=Path, metavar="OUT.pth")
    parser.add_argument(
        "--data-parallel",
        action="store_true",
        help="names as an nn.DataParallel run saves them (module.), as --multiGPU wrote",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks of errors")
    return parser


def run_export(args: argparse.Namespace) -> int:
    """validate (outputs new) -> load -> write the state dict, then the answers."""
    # Imported here: ``lxmert-finetune --help`` and flag errors load neither torch nor models.
    from encoder.build import load_encoder
    from encoder.original import (
        ANSWERS_SUFFIX,
        CONFIG_SUFFIX,
        OriginalCheckpointError,
        save_original,
        sidecar,
        write_sidecars,
    )

    out: Path = args.out
    if out.suffix.lower() != ".pth":
        raise UsageError(f"{out}: the original checkpoints are .pth files; name it OUT.pth")
    for path in (out, sidecar(out, ANSWERS_SUFFIX), sidecar(out, CONFIG_SUFFIX)):
        if path.exists():
            raise UsageError(f"{path} exists; choose a new OUT.pth (nothing is replaced)")
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent} is not a folder")
    try:
        encoder = load_encoder(args.model, device="cpu")
    except (FileNotFoundError, KeyError, ValueError, TypeError) as error:
        raise UsageError(f"cannot load {args.model}: {error}") from None
    try:
        save_original(
            encoder.model, out, head=encoder.config.head, data_parallel=args.data_parallel
        )
    except OriginalCheckpointError as error:
        raise UsageError(f"{args.model}: {error}") from None
    answers = encoder.answers.answers if encoder.answers is not None else None
    written = write_sidecars(encoder.model, out, answers=answers)
    lines = [f"wrote {out} ({encoder.config.head} model, {args.format})"]
    lines += [f"wrote {path}" for path in written]
    if answers is not None:
        lines.append(f"  {len(answers)} answers in label order")
    print("\n".join(lines), file=sys.stderr)
    return EXIT_OK


EXPORT_COMMAND = Command(
    name="export",
    summary="write a model in the original LXMERT's checkpoint layout (.pth)",
    build_parser=build_export_parser,
    run=run_export,
)
