"""fMRI -> image on (simulated) NSD with decodelab's shipped generators: a two-stage Brain-Diffuser analogue.

Brain-Diffuser (Ozcelik & VanRullen 2023, https://github.com/ozcelikfu/brain-diffuser) maps
nsdgeneral betas by ridge to VDVAE latents (stage 1: a blurry low-level image) and to CLIP
embeddings (stage 2: they guide Versatile Diffusion img2img from the stage-1 image). The embedded
path keeps that shape with the models decodelab ships, so it runs offline on a CPU:

- data: :func:`decodelab.datasets.nsd.load_nsd_split` (the Brain-Diffuser split: repeats averaged,
  ``/300``) and :func:`~decodelab.datasets.nsd.zscore_train_test`, on a tree written by
  :func:`decodelab.neuro.simulate_fmri.simulate_nsd` or on anything in NSD's layout;
- targets: (a) the continuous latents of the pipeline's VQ tokenizer (``encode_latents``,
  ``[8, 16, 16]`` for both shipped worlds) and (b) the condition: for ``fmnist-c2i`` the
  class embedding (mean-pooled MiniLM embedding of the image's captions, which name the class),
  for ``shapes-t2i`` the generator's own caption token embeddings ``[16, 384]`` plus the caption
  length (the analogue of Brain-Diffuser's 77 x 768 CLIP-text);
- mapping: :class:`decodelab.neuro.ridge.MultiTargetRidgeCV` per target set, alpha chosen by exact
  leave-one-out error on the training images only (never on the test images);
- stage 1: predicted latents, re-normalised per position as the tokenizer's l2-normed codes,
  are decoded by the tokenizer (``decode_latents``) into the low-level image; their nearest codes
  are the stage-1 tokens;
- stage 2 (choice: **img2img as partial token resampling**): each stage-1 token is resampled with
  probability ``strength`` (default 0.75, Brain-Diffuser's img2img strength; a fixed seed picks
  the positions), the others are kept, and the shipped generator decodes in raster order,
  conditioned on the decoded class (nearest class embedding) or on the predicted caption
  embeddings (mask from the predicted length), seeing the kept tokens as its prefix. ``strength=1``
  is plain conditional generation; ``strength=0`` returns the stage-1 tokens. With
  ``candidates=N`` stage 2 draws N samples and keeps, per image, the one whose luminance (or
  tokenizer latents) correlates best with what ridge predicts from the betas (MindEye's best-of-N
  selection with a low-level criterion; it never looks at the seen image or the evaluation network).

Evaluation (:func:`evaluate_run`): PixCorr and SSIM (:func:`decodelab.eval.brain.evaluate_reconstructions`,
MindEye protocol), 2-way identification and correlation distance with an offline real network,
EfficientNet-Lite0 (:func:`decodelab.eval.features.load_efficientnet_lite0`, 1280-d pooled
features at 224 px; a stand-in for the published AlexNet/Inception/CLIP, which cannot be loaded
here), and a shuffled-pairing baseline (reconstructions paired with another test image).

Steps are resumable: :func:`fit_step` writes ``predictions.npz``, :func:`reconstruct_step`
``reconstructions.npz``, :func:`evaluate_run` ``results.json`` and ``grid.png`` (ground truth
above stage-1 and stage-2 reconstructions); a step whose output exists is skipped unless
``overwrite``. :func:`run_fmri` runs all three.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from decodelab.datasets.nsd import (
    NSDPaths,
    find_nsd,
    load_captions,
    load_nsd_split,
    load_stim_info,
    load_stimuli,
    zscore_train_test,
)
from decodelab.neuro.ridge import MultiTargetRidgeCV
from decodelab.neuro.simulate_fmri import CAPTIONS_FILE, FMNIST_TEMPLATES, read_simulation, world_captions
from decodelab.speculative.base import DecodeContext, Decoder
from decodelab.speculative.sampling import row_generators, sample_rows

__all__ = [
    "ALPHAS",
    "FmriData",
    "PIPELINES",
    "Stage2Inputs",
    "caption_condition",
    "caption_tokens",
    "evaluate_run",
    "fit_step",
    "load_fmri_data",
    "partial_resample",
    "reconstruct_step",
    "run_fmri",
    "stage2_inputs",
]

#: The shipped generator of each simulated world.
PIPELINES = {"fmnist": "fmnist-c2i", "shapes": "shapes-t2i"}
#: Candidate ridge penalties (chosen by leave-one-out on the training images).
ALPHAS = tuple(float(a) for a in np.logspace(0, 6, 13))
#: Side of the luminance image that stage 2's candidate selection compares (``select="pixels"``).
LUMINANCE_SIDE = 32
#: Criteria of stage 2's best-of-N candidate selection.
SELECT = ("pixels", "latents")
PREDICTIONS, RECONSTRUCTIONS, RESULTS, GRID = "predictions.npz", "reconstructions.npz", "results.json", "grid.png"


# ------------------------------------------------------------------------------------------- data
@dataclass
class FmriData:
    """One subject's z-scored betas with the seen images and captions.

    Attributes:
        train_x, test_x: ``[n, V]`` betas (repeat-averaged, ``/300``, z-scored with train statistics).
        train_ids, test_ids: 0-based stimulus ids.
        train_images, test_images: uint8 ``[n, S, S, 3]``.
        train_captions, test_captions: caption lists.
        train_labels, test_labels: class ids of the seen images (-1 when the world has none).
        world: ``"fmnist"`` or ``"shapes"``.
    """

    train_x: np.ndarray
    test_x: np.ndarray
    train_ids: np.ndarray
    test_ids: np.ndarray
    train_images: np.ndarray
    test_images: np.ndarray
    train_captions: list[list[str]]
    test_captions: list[list[str]]
    train_labels: np.ndarray
    test_labels: np.ndarray
    world: str


def load_fmri_data(
    root: str | os.PathLike[str],
    subject: int,
    *,
    world: str | None = None,
    sessions: int | None = None,
    trials_per_session: int | None = None,
    cache: bool = True,
) -> FmriData:
    """Load one subject with the NSD loaders (settings from ``simulation.json`` when ``root`` is a simulation)."""
    root = find_nsd(root)
    sim = read_simulation(root) if (root / "simulation.json").is_file() else {}
    world = world or sim.get("world")
    if world not in PIPELINES:
        raise ValueError(
            f"world must be one of {', '.join(PIPELINES)} (got {world!r}); pass world= for a tree "
            "without simulation.json"
        )
    split = load_nsd_split(
        root,
        subject,
        sessions=sessions or sim.get("sessions", 37),
        trials_per_session=trials_per_session or sim.get("trials_per_session", 750),
        cache=cache,
    )
    train_x, test_x = zscore_train_test(split.train, split.test)
    paths = NSDPaths(root, subject)
    captions_file = root / CAPTIONS_FILE
    train_labels, test_labels = np.full(len(split.train_ids), -1), np.full(len(split.test_ids), -1)
    if paths.stim_info.is_file():
        info = load_stim_info(paths.stim_info)
        if "label" in info.columns:
            label = info["label"].to_numpy()
            train_labels, test_labels = label[split.train_ids], label[split.test_ids]
    return FmriData(
        train_x,
        test_x,
        split.train_ids,
        split.test_ids,
        load_stimuli(paths.stimuli, split.train_ids),
        load_stimuli(paths.stimuli, split.test_ids),
        load_captions(captions_file, split.train_ids),
        load_captions(captions_file, split.test_ids),
        train_labels,
        test_labels,
        world,
    )


def _to_tokenizer(images: np.ndarray, channels: int) -> Tensor:
    """uint8 ``[N, S, S, 3]`` -> float ``[N, C, S, S]`` in [-1, 1] (grey worlds keep one channel)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x[:, :1] if channels == 1 else x


def _to_uint8(images: Tensor) -> np.ndarray:
    """Tokenizer output ``[N, C, S, S]`` (about [-1, 1]) -> uint8 ``[N, S, S, 3]``."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    return x.permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def image_latents(tokenizer: Any, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """The tokenizer's continuous latents ``[N, D * h * w]`` of uint8 images."""
    out = [
        tokenizer.encode_latents(_to_tokenizer(images[a : a + batch_size], tokenizer.in_channels)).flatten(1)
        for a in range(0, len(images), batch_size)
    ]
    return torch.cat(out).numpy().astype(np.float64)


def luminance(images: np.ndarray, side: int = LUMINANCE_SIDE) -> np.ndarray:
    """uint8 ``[N, S, S, 3]`` -> mean-over-channels luminance in [0, 1], area-averaged to ``side``, ``[N, side**2]``."""
    x = images.astype(np.float32).mean(-1) / 255.0
    f = x.shape[1] // side
    if f < 1 or x.shape[1] != f * side:
        raise ValueError(f"images of side {x.shape[1]} cannot be area-averaged to {side} px")
    return x.reshape(len(x), side, f, side, f).mean(axis=(2, 4)).reshape(len(x), -1)


def caption_tokens(text_encoder: Any, captions: list[list[str]]) -> np.ndarray:
    """First caption's token embeddings flattened, then its length: ``[N, T * C + 1]``."""
    emb, mask = text_encoder([c[0] if c else "" for c in captions])
    return np.concatenate([emb.flatten(1).numpy(), mask.sum(1, keepdim=True).float().numpy()], 1).astype(np.float64)


def caption_condition(pred: np.ndarray, max_length: int, dim: int) -> tuple[Tensor, Tensor]:
    """Predicted :func:`caption_tokens` rows -> the generator's caption condition ``([N, T, C], mask [N, T])``.

    The length (last column) is rounded and clipped to ``1..T``; the mask marks the last ``length``
    positions (the text encoder pads on the left) and the embeddings are zeroed elsewhere.
    """
    T, C = int(max_length), int(dim)
    if pred.shape[1] != T * C + 1:
        raise ValueError(f"expected {T * C + 1} values per row (T={T} x C={C} + length), got {pred.shape[1]}")
    emb = torch.from_numpy(np.asarray(pred[:, : T * C], np.float32)).reshape(-1, T, C)
    length = torch.as_tensor(np.clip(np.rint(pred[:, -1]), 1, T).astype(np.int64))
    mask = torch.arange(T)[None] >= (T - length)[:, None]  # [N, T]
    return emb * mask[..., None], mask


def fmnist_class_embeddings(class_names: list[str], text_encoder: Any = None) -> np.ndarray:
    """Class embedding per class (the simulation's captions of that class), ``[n_classes, 384]``."""
    return world_captions([[t.format(n.lower()) for t in FMNIST_TEMPLATES] for n in class_names], text_encoder)


# -------------------------------------------------------------------------------------- fit step
def _ridge(x: np.ndarray, y: np.ndarray, xt: np.ndarray, alphas: tuple[float, ...]) -> tuple[np.ndarray, float]:
    model = MultiTargetRidgeCV(alphas=alphas).fit(x, y)
    return model.predict(xt), float(model.alpha_[0])


def _pipeline(world: str, pipeline: Any) -> Any:
    from decodelab.vision.pipeline import load_pipeline

    return load_pipeline(pipeline or PIPELINES[world]) if not hasattr(pipeline, "tokenizer") else pipeline


def fit_step(
    out_dir: str | os.PathLike[str],
    data: FmriData,
    *,
    pipeline: Any = None,
    alphas: tuple[float, ...] = ALPHAS,
    overwrite: bool = False,
) -> Path:
    """Ridge from betas to latents, conditions and luminance; writes the test predictions to ``predictions.npz``.

    The luminance prediction (``pixels``, :func:`luminance` of the seen images) is what stage 2's
    best-of-N selection compares candidates with; it is not an image of its own.
    """
    out = Path(out_dir) / PREDICTIONS
    if out.is_file() and not overwrite:
        return out
    pipe = _pipeline(data.world, pipeline)
    t0 = time.time()
    lat_train = image_latents(pipe.tokenizer, data.train_images)
    pred_lat, alpha_lat = _ridge(data.train_x, lat_train, data.test_x, alphas)
    if data.world == "fmnist":
        sem_train = world_captions(data.train_captions)
        sem_test = world_captions(data.test_captions)
    else:
        sem_train = caption_tokens(pipe.text_encoder, data.train_captions)
        sem_test = caption_tokens(pipe.text_encoder, data.test_captions)
    pred_sem, alpha_sem = _ridge(data.train_x, sem_train, data.test_x, alphas)
    pred_pix, alpha_pix = _ridge(data.train_x, luminance(data.train_images), data.test_x, alphas)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        latents=pred_lat.astype(np.float32),
        latents_true=image_latents(pipe.tokenizer, data.test_images),
        semantic=pred_sem.astype(np.float32),
        semantic_true=sem_test.astype(np.float32),
        latents_mean=lat_train.mean(0),
        latents_std=lat_train.std(0),
        semantic_mean=sem_train.mean(0),
        semantic_std=sem_train.std(0),
        alpha_latents=alpha_lat,
        alpha_semantic=alpha_sem,
        pixels=pred_pix.astype(np.float32),
        alpha_pixels=alpha_pix,
        fit_time_s=time.time() - t0,
    )
    os.replace(tmp, out)
    return out


# ---------------------------------------------------------------------------- stage 2 resampling
class _PartialResampler(Decoder):
    """Raster decoding that keeps ``init`` tokens where ``resample`` is false (unregistered: a run-level tool)."""

    name = "partial_resample"
    expectation = "lossy"

    def __init__(self, init: Tensor, resample: Tensor) -> None:
        self._init, self._resample = init, resample  # [M, N] each

    def _decode(self, ctx: DecodeContext) -> tuple[Tensor, list[Tensor], dict]:
        B, N = ctx.batch, ctx.num_tokens
        init, keep = self._init.to(ctx.device), ~self._resample.to(ctx.device)
        tokens = torch.empty(B, N, dtype=torch.long, device=ctx.device)
        drawn = sample_rows(ctx.prefill(), ctx.gens)
        tokens[:, 0] = torch.where(keep[:, 0], init[:, 0], drawn)
        ones = torch.ones(B, dtype=torch.long)
        for i in range(1, N):
            probs = ctx.forward(tokens[:, i - 1 : i], torch.tensor([i - 1], device=ctx.device))  # [B, 1, V]
            tokens[:, i] = torch.where(keep[:, i], init[:, i], sample_rows(probs[:, 0], ctx.gens))
        return tokens, [ones] * N, {}


@torch.no_grad()
def partial_resample(
    pipe: Any,
    cond: Tensor,
    init_tokens: Tensor,
    strength: float,
    *,
    cond_mask: Tensor | None = None,
    seed: int = 0,
    batch_size: int = 50,
) -> Tensor:
    """Resample a ``strength`` fraction of each image's tokens with the pipeline's generator, keep the rest.

    Args:
        pipe: an :class:`~decodelab.vision.pipeline.ImageGenerationPipeline` with a raster-order model.
        cond: class ids ``[M]`` or caption embeddings ``[M, T, C]``; cond_mask: ``[M, T]``.
        init_tokens: ``[M, H, W]`` stage-1 tokens.
        strength: probability that a position is resampled (0: ``init_tokens``; 1: plain generation).
        seed: picks the positions and seeds each row's sampling.

    Returns:
        ``[M, H, W]`` tokens.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if strength == 0.0:
        return init_tokens.clone()
    M = init_tokens.shape[0]
    flat = init_tokens.reshape(M, -1).long()
    gen = torch.Generator().manual_seed(int(seed))
    resample = torch.rand(flat.shape, generator=gen) < strength
    gens = row_generators(gen, M)
    sampling = pipe.sampling_config()
    out = []
    for a in range(0, M, batch_size):
        b = min(a + batch_size, M)
        dec = _PartialResampler(flat[a:b], resample[a:b])
        res = dec(
            pipe.model,
            cond[a:b].to(pipe.device),
            sampling=sampling,
            generator=gens[a:b],
            cond_mask=None if cond_mask is None else cond_mask[a:b].to(pipe.device),
        )
        out.append(res.tokens.reshape(b - a, -1).cpu())
    return torch.cat(out).reshape(init_tokens.shape)


# ------------------------------------------------------------------------------ reconstruct step
def _decode_latents(tokenizer: Any, latents: np.ndarray) -> tuple[Tensor, Tensor]:
    """Predicted flat latents -> (stage-1 images ``[N, C, S, S]``, nearest-code tokens ``[N, h, w]``)."""
    d = tokenizer.embed_dim
    n = latents.shape[0]
    side = int(round((latents.shape[1] / d) ** 0.5))
    z = torch.from_numpy(np.asarray(latents, np.float32)).reshape(n, d, side, side)
    if tokenizer.quantize.l2_norm:
        z = torch.nn.functional.normalize(z, dim=1)
    codes = tokenizer.quantize.nearest(z.permute(0, 2, 3, 1).reshape(-1, d)).reshape(n, side, side)
    return tokenizer.decode_latents(z), codes


@dataclass
class Stage2Inputs:
    """What stage 2 starts from, made from the fit step's predictions by :func:`stage2_inputs`.

    Attributes:
        pred: the predictions (``predictions.npz``'s arrays), ``latents`` and ``semantic`` rescaled if asked.
        stage1: stage-1 images ``[M, S, S, C]`` (uint8), the tokenizer's decode of the predicted latents.
        tokens1: stage-1 tokens ``[M, h, w]``, the predicted latents' nearest codes.
        cond: decoded class ids ``[M]`` (fmnist world) or predicted caption embeddings ``[M, T, C]`` (shapes).
        cond_mask: ``[M, T]`` for caption embeddings (from the predicted length), else ``None``.
        extra: the condition as ``reconstructions.npz`` records it: ``classes`` or ``caption_lengths``.
    """

    pred: dict[str, np.ndarray]
    stage1: np.ndarray
    tokens1: Tensor
    cond: Tensor
    cond_mask: Tensor | None
    extra: dict[str, np.ndarray]


@torch.no_grad()
def stage2_inputs(pred: dict[str, np.ndarray], world: str, pipe: Any, *, rescale: bool = True) -> Stage2Inputs:
    """Stage 1 and stage 2's condition from the fit step's predictions, as :func:`reconstruct_step` makes them.

    Args:
        pred: ``predictions.npz``'s arrays (not modified).
        world: the simulated world (``"fmnist"``: the nearest class embedding's class id; else the
            predicted caption embeddings and length).
        pipe: the world's pipeline (its tokenizer decodes stage 1; its class names or text encoder
            give the condition).
        rescale: Brain-Diffuser's post-hoc rescaling of ``latents`` and ``semantic`` (see
            :func:`reconstruct_step`).
    """
    pred = dict(pred)
    if rescale:
        for key in ("latents", "semantic"):
            p = pred[key]
            sd = p.std(0)
            pred[key] = (p - p.mean(0)) / np.where(sd > 0, sd, 1.0) * pred[f"{key}_std"] + pred[f"{key}_mean"]
    stage1, tokens1 = _decode_latents(pipe.tokenizer, pred["latents"])
    mask = None
    if world == "fmnist":
        names = pipe.info.get("class_names") or [str(i) for i in range(pipe.num_classes)]
        centroids = fmnist_class_embeddings(names)
        p = pred["semantic"] / np.linalg.norm(pred["semantic"], axis=1, keepdims=True)
        c = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
        classes = np.argmax(p @ c.T, axis=1)
        cond = torch.as_tensor(classes, dtype=torch.long)
        extra = {"classes": classes}
    else:
        cond, mask = caption_condition(pred["semantic"], pipe.text_encoder.max_length, pipe.text_encoder.dim)
        extra = {"caption_lengths": mask.sum(1).numpy()}
    return Stage2Inputs(pred, _to_uint8(stage1), tokens1, cond, mask, extra)


@torch.no_grad()
def reconstruct_step(
    out_dir: str | os.PathLike[str],
    data: FmriData,
    *,
    pipeline: Any = None,
    strength: float = 0.75,
    rescale: bool = True,
    seed: int = 0,
    candidates: int = 1,
    select: str = "pixels",
    batch_size: int = 50,
    overwrite: bool = False,
) -> Path:
    """Stage 1 (tokenizer decode of predicted latents) and stage 2 (partial resampling); ``reconstructions.npz``.

    Stage 1 and stage 2's condition come from :func:`stage2_inputs`.

    Args:
        rescale: Brain-Diffuser's post-hoc rescaling of the test predictions (z-scored over the test
            set, then given the training targets' mean and sd per dimension); transductive: it uses
            the statistics of all test predictions at once.
        candidates: stage-2 samples per image (candidate ``k`` resamples with seed ``seed + k``); with
            more than one, the kept image is the best by ``select``, which looks only at the fMRI
            predictions, never at the seen image or the evaluation network (MindEye's best-of-N
            selection, with the low-level predictions as the criterion instead of a CLIP embedding).
        select: ``"pixels"``: highest Pearson correlation between the candidate's :func:`luminance`
            and the luminance predicted by ridge from the betas; ``"latents"``: between the
            candidate's tokenizer latents and the predicted latents (after ``rescale``).
    """
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    if select not in SELECT:
        raise ValueError(f"select must be one of {', '.join(SELECT)}, got {select!r}")
    out = Path(out_dir) / RECONSTRUCTIONS
    if out.is_file() and not overwrite:
        return out
    pred_file = Path(out_dir) / PREDICTIONS
    if not pred_file.is_file():
        raise FileNotFoundError(f"{pred_file} not found: run the fit step first (decodelab neuro fit --modality fmri)")
    pipe = _pipeline(data.world, pipeline)
    with np.load(pred_file) as z:
        pred = {k: z[k] for k in z.files}
    s2 = stage2_inputs(pred, data.world, pipe, rescale=rescale)
    pred, tokens1, cond, mask = s2.pred, s2.tokens1, s2.cond, s2.cond_mask
    extra: dict[str, Any] = dict(s2.extra)
    if candidates > 1 and select == "pixels" and "pixels" not in pred:
        raise ValueError(
            f"{pred_file} has no luminance prediction (written by an older fit step): rerun the fit step with "
            "overwrite (decodelab neuro fit-fmri --overwrite) or pass select='latents'"
        )
    from decodelab.eval.brain import row_correlation

    t0 = time.time()
    target = pred["pixels"] if select == "pixels" else pred["latents"]
    cands, scores = [], []
    for k in range(candidates):
        tokens = partial_resample(pipe, cond, tokens1, strength, cond_mask=mask, seed=seed + k, batch_size=batch_size)
        cands.append(tokens)
        if candidates > 1:
            images = _to_uint8(pipe.tokenizer.decode(tokens.to(pipe.device)).cpu())
            feats = luminance(images) if select == "pixels" else image_latents(pipe.tokenizer, images)
            scores.append(row_correlation(feats, target, constant="zero"))
    tokens2 = cands[0]
    if scores:
        table = np.stack(scores)  # [candidates, M]
        chosen = table.argmax(0)  # the first best candidate per image
        tokens2 = torch.stack(cands)[torch.from_numpy(chosen), torch.arange(len(chosen))]
        extra["candidate_scores"] = table.astype(np.float32)
        extra["selected"] = chosen
    stage2 = pipe.tokenizer.decode(tokens2.to(pipe.device)).cpu()
    gen_time = time.time() - t0
    tmp = out.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        stage1=s2.stage1,
        stage2=_to_uint8(stage2),
        tokens1=tokens1.numpy(),
        tokens2=tokens2.numpy(),
        strength=strength,
        rescale=rescale,
        seed=seed,
        candidates=candidates,
        select=select,
        generation_time_s=gen_time,
        **extra,
    )
    os.replace(tmp, out)
    return out


# ------------------------------------------------------------------------------------ evaluation
def lite0_network(weights: str | os.PathLike[str] | None = None) -> Any:
    """EfficientNet-Lite0 pooled features as a :class:`~decodelab.eval.brain.FeatureNetwork` (TF-Lite scaling)."""
    from decodelab.eval.brain import FeatureNetwork
    from decodelab.eval.features import load_efficientnet_lite0

    net = load_efficientnet_lite0(weights)

    def pooled(x: Tensor) -> Tensor:
        return net.forward_features(x).mean(dim=(2, 3))  # [B, 1280]

    return FeatureNetwork(pooled, mean=(127 / 255,) * 3, std=(128 / 255,) * 3, name="efficientnet-lite0")


def derangement(n: int, seed: int) -> np.ndarray:
    """A permutation of ``range(n)`` that moves every index (the shuffled-pairing baselines)."""
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def _nchw(images: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def network_features(network: Any, images: np.ndarray, size: int = 224) -> np.ndarray:
    """``network`` features of uint8 ``[N, S, S, 3]`` images resized to ``size`` (torch bilinear)."""
    from decodelab.eval.resize import resize_images

    return network(resize_images(_nchw(images), size, "pytorch-bilinear") / 255.0).numpy()


def _score(gt: np.ndarray, rec: np.ndarray, feats_gt: np.ndarray, feats_rec: np.ndarray, name: str) -> dict[str, float]:
    from decodelab.eval.brain import (
        bootstrap_ci,
        correlation_distance,
        evaluate_reconstructions,
        two_way_per_reconstruction,
    )

    out = evaluate_reconstructions(_nchw(gt), _nchw(rec), metrics=["pixcorr", "ssim"], protocol="mindeye")
    wins = two_way_per_reconstruction(feats_gt, feats_rec)
    out[f"twoway_{name}"] = float(np.mean(wins))
    out[f"twoway_{name}_ci95"] = bootstrap_ci(wins)  # over test images: the 2-way's uncertainty
    out[f"corrdist_{name}"] = correlation_distance(feats_gt, feats_rec)
    return out


def score(gt: np.ndarray, rec: np.ndarray, network: Any, size: int = 224) -> dict[str, float]:
    """PixCorr, SSIM (MindEye protocol), 2-way identification and correlation distance with ``network``.

    Args:
        gt, rec: uint8 ``[N, S, S, 3]`` seen images and reconstructions, same order.
        network: a :class:`~decodelab.eval.brain.FeatureNetwork` (or any callable with a ``name``).
        size: the network's input side.
    """
    return _score(gt, rec, network_features(network, gt, size), network_features(network, rec, size), network.name)


def _grid(rows: list[np.ndarray], path: Path, n: int = 12, scale: int = 2) -> Path:
    from PIL import Image

    n = min(n, len(rows[0]))
    s = rows[0].shape[1]
    canvas = np.full((len(rows) * (s + 2), n * (s + 2), 3), 255, np.uint8)
    for r, imgs in enumerate(rows):
        for c in range(n):
            canvas[r * (s + 2) : r * (s + 2) + s, c * (s + 2) : c * (s + 2) + s] = imgs[c]
    img = Image.fromarray(canvas)
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)
    return path


def evaluate_run(
    out_dir: str | os.PathLike[str],
    data: FmriData,
    *,
    network: Any = None,
    network_weights: str | os.PathLike[str] | None = None,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score stage 1 and stage 2 and their shuffled pairings; write ``results.json`` and ``grid.png``.

    Args:
        network: the feature network of the identification metric (default: EfficientNet-Lite0 from
            ``network_weights``, default the installed package's file).
    """
    out = Path(out_dir) / RESULTS
    if out.is_file() and not overwrite:
        return json.loads(out.read_text())
    rec_file = Path(out_dir) / RECONSTRUCTIONS
    if not rec_file.is_file():
        raise FileNotFoundError(f"{rec_file} not found: run the reconstruct step first")
    network = network if network is not None else lite0_network(network_weights)
    with np.load(rec_file) as z:
        rec = {k: z[k] for k in z.files}
    gt = data.test_images
    perm = derangement(len(gt), seed)
    results: dict[str, Any] = {
        "n_test_images": len(gt),
        "n_voxels": int(data.test_x.shape[1]),
        "n_train_images": int(len(data.train_x)),
        "strength": float(rec["strength"]),
        "rescale": bool(rec["rescale"]),
        "candidates": int(rec["candidates"]) if "candidates" in rec else 1,
    }
    if results["candidates"] > 1:
        results["select"] = str(rec["select"])
    feats_gt = network_features(network, gt)
    for stage in ("stage1", "stage2"):
        feats = network_features(network, rec[stage])
        results[stage] = _score(gt, rec[stage], feats_gt, feats, network.name)
        results[f"{stage}_shuffled"] = _score(gt, rec[stage][perm], feats_gt, feats[perm], network.name)
    if "classes" in rec and (data.test_labels >= 0).all():
        results["decoded_class_accuracy"] = float(np.mean(rec["classes"] == data.test_labels))
    results["generation_time_s"] = float(rec["generation_time_s"])
    results.update(extra or {})
    _grid([gt, rec["stage1"], rec["stage2"]], Path(out_dir) / GRID)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return results


def run_fmri(
    out_dir: str | os.PathLike[str],
    root: str | os.PathLike[str],
    subject: int = 1,
    *,
    strength: float = 0.75,
    rescale: bool = True,
    seed: int = 0,
    candidates: int = 1,
    select: str = "pixels",
    pipeline: Any = None,
    network: Any = None,
    network_weights: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fit, reconstruct and evaluate one subject (each step resumable); returns ``results.json``'s content."""
    t0 = time.time()
    data = load_fmri_data(root, subject)
    done = all((Path(out_dir) / f).is_file() for f in (PREDICTIONS, RECONSTRUCTIONS, RESULTS)) and not overwrite
    pipe = None if done else _pipeline(data.world, pipeline)  # a finished run loads no model
    fit_step(out_dir, data, pipeline=pipe, overwrite=overwrite)
    reconstruct_step(
        out_dir,
        data,
        pipeline=pipe,
        strength=strength,
        rescale=rescale,
        seed=seed,
        candidates=candidates,
        select=select,
        overwrite=overwrite,
    )
    sim = read_simulation(root) if (Path(root) / "simulation.json").is_file() else {}
    extra = {
        "subject": subject,
        "world": data.world,
        "pipeline": PIPELINES[data.world],
        "noise": sim.get("noise"),
        "ncsnr_median": sim.get("per_subject", {}).get(str(subject), {}).get("ncsnr_median"),
        "threads": torch.get_num_threads(),
    }
    res = evaluate_run(
        out_dir, data, network=network, network_weights=network_weights, seed=seed, extra=extra, overwrite=overwrite
    )
    res.setdefault("wall_time_s", round(time.time() - t0, 1))
    return res
