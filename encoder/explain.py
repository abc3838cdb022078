"""Why this answer: relevance of each region and each question word for one LXMERT answer.

The method is Chefer, Gur and Wolf, "Generic Attention-model Explainability for Interpreting
Bi-Modal and Encoder-Decoder Transformers" (ICCV 2021), written from the paper:

- every attention map ``A`` ``[H, Q, K]`` is weighted by its gradient with respect to the
  chosen answer's logit, the positive part kept, and the heads averaged:
  ``Ā = mean_h((∇A ⊙ A)^+)`` ``[Q, K]``;
- four relevance maps start as ``R_tt = I``, ``R_ii = I``, ``R_ti = 0``, ``R_it = 0``
  (t: text tokens, i: image regions; ``R_xy[a, b]``: how much y's token b counts for x's a);
- a self-attention map of modality s (other modality q) adds ``Ā R_ss`` to ``R_ss`` and
  ``Ā R_sq`` to ``R_sq`` (eqs. 6, 7);
- a co-attention map with queries from s and keys from q adds ``R̄_ssᵀ Ā R̄_qq`` to ``R_sq``
  and ``Ā R_qs`` to ``R_ss`` (eqs. 10, 11), where ``R̄ = normalise_rows(R - I) + I``
  (eqs. 8, 9); both co-attention maps of a cross layer read the relevance as it was before
  that layer, then its two self-attention maps follow, as the layer computes them.

Answers are read from ``[CLS]``, so a region's relevance is ``R_ti[0, region]`` and a word's
``R_tt[0, token]``. A map the answer does not depend on (in the last cross layer the vision
side never reaches ``[CLS]``) has a zero gradient and so adds nothing.

transformers' ``LxmertModel`` returns only 19 of its 34 maps with ``output_attentions`` (9
language, 5 vision and the 5 cross layers' language-to-vision maps, as ``cross_encoder_
attentions``; each cross layer's vision-to-language map and its two self-attention maps are
computed and dropped: tested), so
:class:`capture_attention` takes every map with forward hooks on each attention's dropout
module, whose input and output are the attention probabilities themselves in eval mode.
The maps keep their autograd history: gradients flow through them.

The baseline ``method="attention"`` is the raw attention of the last cross layer: its
language-to-vision map and its language self-attention map, ``[CLS]`` row, heads averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from transformers import LxmertModel, LxmertPreTrainedModel

from detector.structures import RegionFeatures
from encoder.build import Encoder
from encoder.nlvr2 import TRUE_LABEL, LxmertForNLVR2, true_probability

#: ``"chefer"``: gradient-weighted relevance propagation; ``"attention"``: raw last-layer
#: cross-attention (the baseline).
Method = Literal["chefer", "attention"]
METHODS: tuple[Method, ...] = ("chefer", "attention")

#: What a captured map relates: queries -> keys.
MapKind = Literal["lang_self", "vision_self", "lang_to_vision", "vision_to_lang"]


@dataclass(frozen=True, eq=False)
class AttentionMap:
    """One attention map as the model computed it (not detached).

    Attributes:
        stream: ``"language"`` (the language-only layers), ``"vision"`` (the vision-only
            layers) or ``"cross"`` (the cross-modality layers).
        layer: 0-based index within ``stream``.
        kind: queries -> keys; in a cross layer ``lang_to_vision`` and ``vision_to_lang``
            are its co-attention maps, ``lang_self`` and ``vision_self`` its self-attention.
        probs: float ``[B, H, Q, K]`` softmax probabilities (zero at masked keys).
    """

    stream: Literal["language", "vision", "cross"]
    layer: int
    kind: MapKind
    probs: torch.Tensor = field(repr=False)


def lxmert_body(model: nn.Module) -> LxmertModel:
    """The ``LxmertModel`` inside a QA, pretraining or NLVR2 model (or the model itself)."""
    if isinstance(model, LxmertModel):
        return model
    body = getattr(model, "lxmert", None)
    if not isinstance(body, LxmertModel):
        raise TypeError(f"{type(model).__name__} holds no LxmertModel under .lxmert")
    return body


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[list[AttentionMap]]:
    """Record every attention map of ``model``'s forward passes while the block runs.

    Yields a list that fills in call order: language layers, vision layers, then per cross
    layer ``lang_to_vision``, ``vision_to_lang``, ``lang_self``, ``vision_self`` (9 + 5 + 5 x 4
    = 34 maps for LXMERT's sizes). The hooks are removed on exit, whatever happens.
    """
    encoder = lxmert_body(model).encoder
    captured: list[AttentionMap] = []
    handles = []
    # The cross layers' one visual_attention module runs twice: language queries first.
    watched: list[tuple[nn.Module, str, int, tuple[MapKind, ...]]] = [
        *(
            (layer.attention.self, "language", i, ("lang_self",))
            for i, layer in enumerate(encoder.layer)
        ),
        *(
            (layer.attention.self, "vision", i, ("vision_self",))
            for i, layer in enumerate(encoder.r_layers)
        ),
    ]
    for i, layer in enumerate(encoder.x_layers):
        watched.append(
            (layer.visual_attention.att, "cross", i, ("lang_to_vision", "vision_to_lang"))
        )
        watched.append((layer.lang_self_att.self, "cross", i, ("lang_self",)))
        watched.append((layer.visn_self_att.self, "cross", i, ("vision_self",)))
    for attention, stream, index, kinds in watched:
        # In eval mode the dropout module's output is the softmax itself, and it is what the
        # values are multiplied by: the one place the map is both visible and on the path.
        dropout = attention.dropout
        if not isinstance(dropout, nn.Module):
            raise TypeError(f"{type(attention).__name__}.dropout is not a module; cannot hook")
        handles.append(dropout.register_forward_hook(_recorder(captured, stream, index, kinds)))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _recorder(
    captured: list[AttentionMap], stream: str, layer: int, kinds: tuple[MapKind, ...]
) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
    calls = [0]

    def hook(_module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        kind = kinds[calls[0] % len(kinds)]
        calls[0] += 1
        captured.append(AttentionMap(stream=stream, layer=layer, kind=kind, probs=output))  # type: ignore[arg-type]

    return hook


def head_average(probs: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
    """``Ā = mean_h((grad ⊙ probs)^+)``: ``[H, Q, K]`` -> ``[Q, K]``; zeros without a gradient
    (a map the answer does not depend on)."""
    if grad is None:
        return torch.zeros(probs.shape[1:], dtype=probs.dtype, device=probs.device)
    return (grad * probs).clamp(min=0).mean(dim=0)


def _bar(relevance: torch.Tensor) -> torch.Tensor:
    """``R̄ = normalise_rows(R - I) + I`` (eqs. 8, 9). A row of ``R - I`` that is all zero
    (a token nothing has flowed into yet) stays zero instead of dividing by zero."""
    eye = torch.eye(relevance.shape[0], dtype=relevance.dtype, device=relevance.device)
    hat = relevance - eye
    sums = hat.sum(dim=-1, keepdim=True)
    hat = torch.where(sums > 0, hat / sums.clamp(min=torch.finfo(hat.dtype).tiny), 0.0)
    return hat + eye


@dataclass
class _Relevance:
    """The four relevance maps of one batch row while rules are applied (mutable scratch).

    ``tt`` ``[T, T]``, ``ii`` ``[N, N]``, ``ti`` ``[T, N]``, ``it`` ``[N, T]``."""

    tt: torch.Tensor
    ii: torch.Tensor
    ti: torch.Tensor
    it: torch.Tensor

    @classmethod
    def start(cls, tokens: int, regions: int, *, device: torch.device) -> _Relevance:
        def eye(n: int) -> torch.Tensor:
            return torch.eye(n, dtype=torch.float32, device=device)

        zeros = torch.zeros
        return cls(
            tt=eye(tokens),
            ii=eye(regions),
            ti=zeros((tokens, regions), device=device),
            it=zeros((regions, tokens), device=device),
        )

    def text_self(self, a: torch.Tensor) -> None:
        """Eqs. 6, 7 for a language self-attention ``Ā`` ``[T, T]``."""
        self.tt, self.ti = self.tt + a @ self.tt, self.ti + a @ self.ti

    def image_self(self, a: torch.Tensor) -> None:
        """Eqs. 6, 7 for a vision self-attention ``Ā`` ``[N, N]``."""
        self.ii, self.it = self.ii + a @ self.ii, self.it + a @ self.it

    def co_attention(self, text_to_image: torch.Tensor, image_to_text: torch.Tensor) -> None:
        """Eqs. 10, 11 for both co-attention maps of one cross layer (``[T, N]``, ``[N, T]``),
        each read against the relevance before the layer."""
        bar_tt, bar_ii = _bar(self.tt), _bar(self.ii)
        add_ti = bar_tt.T @ text_to_image @ bar_ii
        add_tt = text_to_image @ self.it
        add_it = bar_ii.T @ image_to_text @ bar_tt
        add_ii = image_to_text @ self.ti
        self.ti, self.tt = self.ti + add_ti, self.tt + add_tt
        self.it, self.ii = self.it + add_it, self.ii + add_ii


@dataclass(frozen=True)
class RowRelevance:
    """Raw relevance of one batch row, before words are merged and scores normalised.

    Attributes:
        tokens: float ``[T]`` relevance of each token for ``[CLS]`` (``[CLS]`` itself 0).
        regions: float ``[N]`` relevance of each region (box) for ``[CLS]``, non-negative;
            zero at masked (padding) regions.
    """

    tokens: torch.Tensor
    regions: torch.Tensor


def chefer_relevance(
    maps: Sequence[AttentionMap], grads: Sequence[torch.Tensor | None], *, row: int
) -> RowRelevance:
    """Chefer et al.'s relevance of batch row ``row`` from the captured ``maps`` (in call
    order, :func:`capture_attention`) and their gradients (None: no path to the target)."""
    if len(maps) != len(grads):
        raise ValueError(f"got {len(maps)} maps but {len(grads)} gradients")
    averaged = [
        head_average(m.probs[row].detach(), None if g is None else g[row].detach())
        for m, g in zip(maps, grads, strict=True)
    ]
    first = {m.kind: a for m, a in zip(maps, averaged, strict=True)}
    tokens = (
        first["lang_self"].shape[0] if "lang_self" in first else first["lang_to_vision"].shape[0]
    )
    regions = (
        first["vision_self"].shape[0]
        if "vision_self" in first
        else first["lang_to_vision"].shape[1]
    )
    state = _Relevance.start(tokens, regions, device=averaged[0].device)
    pending: dict[MapKind, torch.Tensor] = {}
    for m, a in zip(maps, averaged, strict=True):
        if m.kind in ("lang_to_vision", "vision_to_lang"):
            pending[m.kind] = a
            if len(pending) == 2:
                state.co_attention(pending["lang_to_vision"], pending["vision_to_lang"])
                pending = {}
        elif m.kind == "lang_self":
            state.text_self(a)
        else:
            state.image_self(a)
    if pending:
        raise ValueError("a cross layer's co-attention maps were not captured in pairs")
    text = state.tt[0].clone()
    text[0] = 0.0  # [CLS] explains itself trivially (the identity it starts from)
    return RowRelevance(tokens=text, regions=state.ti[0].clamp(min=0))


def attention_relevance(maps: Sequence[AttentionMap], *, row: int) -> RowRelevance:
    """The baseline: the last cross layer's raw ``[CLS]`` attention, heads averaged, to the
    regions (its language-to-vision map) and to the tokens (its language self-attention)."""
    last = max(m.layer for m in maps if m.stream == "cross")
    of_last = {
        m.kind: m.probs[row].detach() for m in maps if m.stream == "cross" and m.layer == last
    }
    text = of_last["lang_self"].mean(dim=0)[0].clone()
    text[0] = 0.0
    return RowRelevance(tokens=text, regions=of_last["lang_to_vision"].mean(dim=0)[0])


@dataclass(frozen=True)
class RawExplanation:
    """What one forward and backward pass gives, before names are attached.

    Attributes:
        logits: float ``[B, A]`` the model's output, detached (the same numbers as without
            explaining).
        rows: one :class:`RowRelevance` per explained batch row of the ``LxmertModel``.
        maps: how many attention maps were captured.
    """

    logits: torch.Tensor
    rows: tuple[RowRelevance, ...]
    maps: int


def explain_inputs(
    model: LxmertPreTrainedModel,
    inputs: dict[str, torch.Tensor],
    *,
    target: Callable[[torch.Tensor], torch.Tensor],
    rows: Sequence[int],
    method: Method = "chefer",
) -> RawExplanation:
    """Run ``model`` on ``inputs`` (gradients on for Chefer) and explain ``target(logits)``.

    Args:
        model: an LXMERT QA or NLVR2 model in eval mode.
        inputs: its forward's keyword arguments; tensors made in inference mode (the
            detector's) are cloned, so they can enter autograd.
        target: the scalar to explain from the logits ``[B, A]``: the chosen answer's logit.
        rows: batch rows of the inner ``LxmertModel`` to explain (an NLVR2 pair is 2 rows).
        method: ``"chefer"`` or ``"attention"``.

    Parameters get no ``.grad``: only the maps' gradients are taken.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if model.training:
        raise ValueError("explain needs the model in eval mode (dropout would change the maps)")
    # Only Chefer needs gradients; the baseline reads the maps from a plain forward pass.
    with torch.inference_mode(False), torch.set_grad_enabled(method == "chefer"):
        cloned = {name: tensor.clone() for name, tensor in inputs.items()}
        with capture_attention(model) as maps:
            output = model(**cloned)
        logits = (
            output.logits if isinstance(model, LxmertForNLVR2) else output.question_answering_score
        )
        if method == "chefer":
            grads = torch.autograd.grad(target(logits), [m.probs for m in maps], allow_unused=True)
            found = [chefer_relevance(maps, grads, row=r) for r in rows]
        else:
            found = [attention_relevance(maps, row=r) for r in rows]
    return RawExplanation(logits=logits.detach(), rows=tuple(found), maps=len(maps))


@dataclass(frozen=True)
class RegionScore:
    """One region's share of the relevance.

    Attributes:
        index: the region's position in the detector's output.
        score: relevance, >= 0; a picture's scores sum to 1.
        box: (x1, y1, x2, y2) raw-image pixels.
        label: the detector's label for the box (``"attribute object"`` from the pipeline).
    """

    index: int
    score: float
    box: tuple[float, float, float, float]
    label: str


@dataclass(frozen=True)
class WordScore:
    """One question word's share of the relevance (its WordPieces summed; >= 0, the words of
    a question sum to 1)."""

    word: str
    score: float


@dataclass(frozen=True)
class ImageRelevance:
    """The relevance of one picture's regions.

    Attributes:
        image_id: the picture's id.
        regions: one :class:`RegionScore` per region, in the detector's order.
        share: this picture's part of the raw relevance of all pictures explained together
            (1.0 for a question about one picture; left + right = 1 for an NLVR2 pair).
    """

    image_id: str
    regions: tuple[RegionScore, ...]
    share: float = 1.0

    def top(self, k: int = 3) -> tuple[RegionScore, ...]:
        """The ``k`` most relevant regions, best first (ties by index)."""
        return tuple(sorted(self.regions, key=lambda r: (-r.score, r.index))[:k])


@dataclass(frozen=True)
class Explanation:
    """Why LXMERT gave ``answer`` to ``question`` about one picture.

    Attributes:
        question: as asked.
        answer: the answer explained; ``label`` its index in the answer set.
        probability: the answer's softmax probability (as ``Encoder.answer`` reports it).
        method: ``"chefer"`` or ``"attention"``.
        image: the relevance of each region.
        words: the question's words, in order, without ``[CLS]`` and ``[SEP]``.
    """

    question: str
    answer: str
    label: int
    probability: float
    method: Method
    image: ImageRelevance
    words: tuple[WordScore, ...]

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (regions in the detector's order)."""
        return {
            "question": self.question,
            "answer": self.answer,
            "probability": self.probability,
            "method": self.method,
            "regions": [_region_json(r) for r in self.image.regions],
            "words": [{"word": w.word, "score": w.score} for w in self.words],
        }


@dataclass(frozen=True)
class PairExplanation:
    """Why the NLVR2 model judged ``statement`` ``verdict`` for a (left, right) pair.

    Attributes:
        verdict: the verdict explained (True: the statement holds).
        probability: that verdict's probability.
        left, right: each picture's regions, each summing to 1, with its ``share``.
        words: the statement's words (relevance summed over both pictures' passes).
    """

    statement: str
    verdict: bool
    probability: float
    method: Method
    left: ImageRelevance
    right: ImageRelevance
    words: tuple[WordScore, ...]

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "statement": self.statement,
            "verdict": self.verdict,
            "probability": self.probability,
            "method": self.method,
            **{
                side: {"share": image.share, "regions": [_region_json(r) for r in image.regions]}
                for side, image in (("left", self.left), ("right", self.right))
            },
            "words": [{"word": w.word, "score": w.score} for w in self.words],
        }


def _region_json(region: RegionScore) -> dict[str, object]:
    return {
        "index": region.index,
        "score": region.score,
        "box": list(region.box),
        "label": region.label,
    }


def normalised(scores: torch.Tensor) -> list[float]:
    """Non-negative scores summing to 1; uniform when nothing is relevant at all (a zero
    gradient), since no region is then preferred."""
    values = scores.detach().double().clamp(min=0).cpu()
    total = float(values.sum())
    if not total > 0:
        return [1.0 / len(values)] * len(values)
    return [float(v) / total for v in values]


def merge_words(tokens: Sequence[str], scores: torch.Tensor) -> tuple[WordScore, ...]:
    """WordPieces merged into words (``##`` pieces join the word before; scores summed),
    ``[CLS]``/``[SEP]``/``[PAD]`` left out, scores normalised to sum to 1."""
    words: list[list[object]] = []
    for token, score in zip(tokens, scores.detach().double().cpu().tolist(), strict=True):
        if token in ("[CLS]", "[SEP]", "[PAD]"):
            continue
        if token.startswith("##") and words:
            words[-1][0] = f"{words[-1][0]}{token[2:]}"
            words[-1][1] = float(words[-1][1]) + score  # type: ignore[arg-type]
        else:
            words.append([token, score])
    if not words:
        return ()
    shares = normalised(torch.tensor([float(w[1]) for w in words]))  # type: ignore[arg-type]
    return tuple(WordScore(word=str(w[0]), score=s) for w, s in zip(words, shares, strict=True))


def _image_relevance(
    region: RegionFeatures, scores: torch.Tensor, labels: Sequence[str] | None, *, share: float
) -> ImageRelevance:
    count = region.num_boxes
    if labels is not None and len(labels) != count:
        raise ValueError(f"got {len(labels)} labels for {count} regions of {region.image_id!r}")
    names = labels if labels is not None else [str(int(o)) for o in region.objects_id]
    shares = normalised(scores[:count])
    return ImageRelevance(
        image_id=region.image_id,
        share=share,
        regions=tuple(
            RegionScore(
                index=i,
                score=shares[i],
                box=tuple(float(v) for v in region.boxes[i]),  # type: ignore[arg-type]
                label=names[i],
            )
            for i in range(count)
        ),
    )


def _question_tokens(encoder: Encoder, inputs: dict[str, torch.Tensor]) -> list[str]:
    real = int(inputs["attention_mask"][0].sum())
    ids = inputs["input_ids"][0, :real].tolist()
    return list(encoder.tokenizer.convert_ids_to_tokens(ids))


def explain_answer(
    encoder: Encoder,
    region: RegionFeatures,
    question: str,
    *,
    answer: str | None = None,
    method: Method = "chefer",
    labels: Sequence[str] | None = None,
) -> Explanation:
    """Explain ``encoder``'s ``answer`` (default: its top answer) to ``question`` about the
    picture whose regions are ``region``.

    Args:
        labels: one name per region (default: the object class id as a string).

    Raises:
        ValueError: the encoder has no QA head, ``answer`` is not in its answer set, or
            ``method`` is unknown.
    """
    table = encoder.answers
    if table is None or isinstance(encoder.model, LxmertForNLVR2):
        raise ValueError(
            f"encoder {encoder.config.checkpoint!r} has no QA head (head="
            f"{encoder.config.head!r}); use explain_judgement for an NLVR2 model"
        )
    chosen = None if answer is None else table.label(answer)
    if answer is not None and chosen is None:
        raise ValueError(
            f"answer {answer!r} is not in the answer set {table.name!r} of "
            f"{encoder.config.checkpoint!r}"
        )
    inputs = encoder.model_inputs([region], [question])

    def target(logits: torch.Tensor) -> torch.Tensor:
        return logits[0, int(logits[0].argmax()) if chosen is None else chosen]

    raw = explain_inputs(encoder.model, inputs, target=target, rows=[0], method=method)
    label = int(raw.logits[0].argmax()) if chosen is None else chosen
    probability = float(torch.softmax(raw.logits[0].float(), dim=-1)[label])
    return Explanation(
        question=question,
        answer=table.answer(label),
        label=label,
        probability=probability,
        method=method,
        image=_image_relevance(region, raw.rows[0].regions, labels, share=1.0),
        words=merge_words(_question_tokens(encoder, inputs), raw.rows[0].tokens),
    )


def explain_judgement(
    encoder: Encoder,
    left: RegionFeatures,
    right: RegionFeatures,
    statement: str,
    *,
    verdict: bool | None = None,
    method: Method = "chefer",
    labels: tuple[Sequence[str] | None, Sequence[str] | None] = (None, None),
) -> PairExplanation:
    """Explain an NLVR2 model's ``verdict`` (default: its own) on ``statement`` about the pair
    (``left``, ``right``): relevance per region of each picture and per word.

    The model reads each picture with the statement (two rows of its ``LxmertModel``) and
    one head reads both ``[CLS]`` outputs, so one gradient explains both rows.
    """
    if not isinstance(encoder.model, LxmertForNLVR2):
        raise ValueError(
            f"encoder {encoder.config.checkpoint!r} has no NLVR2 head (head="
            f"{encoder.config.head!r}); use explain_answer for a QA model"
        )
    inputs = encoder.pair_inputs([left], [right], [statement])

    def target(logits: torch.Tensor) -> torch.Tensor:
        index = int(logits[0].argmax()) if verdict is None else int(verdict)
        return logits[0, index]

    raw = explain_inputs(encoder.model, inputs, target=target, rows=[0, 1], method=method)
    chosen = bool(int(raw.logits[0].argmax()) == TRUE_LABEL) if verdict is None else verdict
    true_p = float(true_probability(raw.logits)[0])
    totals = [float(row.regions.clamp(min=0).sum()) for row in raw.rows]
    whole = sum(totals)
    shares = [t / whole for t in totals] if whole > 0 else [0.5, 0.5]
    text = raw.rows[0].tokens + raw.rows[1].tokens
    left_labels, right_labels = labels
    return PairExplanation(
        statement=statement,
        verdict=chosen,
        probability=true_p if chosen else 1.0 - true_p,
        method=method,
        left=_image_relevance(left, raw.rows[0].regions, left_labels, share=shares[0]),
        right=_image_relevance(right, raw.rows[1].regions, right_labels, share=shares[1]),
        words=merge_words(_question_tokens(encoder, inputs), text),
    )
