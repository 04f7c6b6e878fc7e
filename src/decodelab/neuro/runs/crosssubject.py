"""Issue 23 on the simulated brain: in-context cross-subject decoding (K-sweep) and shapes-world brain captioning.

**Cross-subject K-sweep** (BrainCoDec, Nan et al., CVPR 2026, arXiv 2604.08537; the models are
:mod:`decodelab.neuro.incontext`). Several subjects of a simulated NSD tree
(:func:`decodelab.neuro.simulate_fmri.simulate_nsd`: own voxel grids, receptive fields, tuning and
NSD-calibrated noise) are read with the NSD loaders. The image embedding decoded is the one the
world's decoder targets: the shipped Fashion-MNIST classifier's penultimate features (128-d) for
``fmnist``, the mean-pooled MiniLM caption embedding (384-d, what ``shapes-t2i`` reads) for
``shapes``; centred by the training subjects' mean image embedding. :func:`meta_train` trains
stage 1 on the training subjects' voxels (response objective), infers their encoders with it,
fits :class:`~decodelab.neuro.incontext.SyntheticVoxelPrior` to those encoders (noise sd = the
inferred encoders' residual sd on held-out images), pretrains stage 2 on synthetic voxels from that
prior and then meta-trains stage 2 through the frozen stage 1 on the training subjects. The
held-out subject is decoded with **no fine-tuning** from its first ``K`` training images (the
context), for ``K`` in :data:`K_VALUES`; its betas are z-scored with the context's statistics only.

Baselines on the same ``K`` context images (:func:`k_sweep`):

- ``ridge_on_k``: :class:`~decodelab.neuro.ridge.MultiTargetRidgeCV` from the held-out subject's
  voxels to the embedding, alpha by leave-one-out on the ``K`` images;
- ``aligned_ridge``: each training subject ``s`` has a decoder ridge (its voxels -> embedding, all its
  training images) and an encoding ridge (embedding -> its voxels). The **anatomy-free functional
  alignment** maps the held-out subject's voxels to ``s``'s voxel space by a ridge fitted on the ``K``
  context images, whose targets are ``s``'s *encoding-model-predicted* responses to those images
  (the subjects saw different training images, so the shared stimuli are synthesised through ``s``'s
  encoder — the hyperalignment-by-shared-response idea without shared stimuli); the test betas go
  through the alignment and ``s``'s decoder; predictions are averaged over training subjects.

With ``diagnose=True`` each ``K`` also gets the rows of :data:`DIAGNOSTICS`, scored the same way:
the trained stage 2 fed closed-form per-voxel ridge encoders fitted on the same context instead of
stage 1's, and a closed-form Gaussian inversion of either set of encoders instead of stage 2; plus
``encoder_r``, the per-voxel test correlation of both encoders against the noise ceiling from the
tree's ``ncsnr``. (The simulation's true encoders are not linear in the decoded embedding, so there
is no "true (w, b)" row.)

Retrieval: each test response's predicted embedding ranks the ``n_test`` test images' embeddings by
cosine (ties shared, :func:`decodelab.eval.meg.retrieval_ranks`); top-1 / top-5 with chance
``1 / n`` and ``5 / n``.

**Brain captioning, embedded path** (Ferrante et al., arXiv 2305.11560, on the shapes world): ridge
from one subject's betas to the MiniLM caption embedding; the caption is the nearest neighbour (cosine,
centred by the training mean) among every caption of the world's grammar
(:func:`shapes_grammar_captions`, the templates of :func:`decodelab.datasets.shapes.sample_prompt`);
``shapes-t2i`` draws the image from the decoded caption. Scores: per-attribute exact match
(:func:`decodelab.eval.captions.shapes_caption_scores`), sentence-embedding cosine, METEOR (exact) and
ROUGE-L against the true caption; GenEval-style detector accuracy of the generated images against the
*true* caption (:func:`decodelab.eval.shapes_geneval.score_batch`). Chance: the same decoded captions
and images paired with another test image (a fixed derangement); the detector on the true images is
the ceiling.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from decodelab.datasets.nsd import NSDPaths, find_nsd, load_captions, load_nsd_split, load_stimuli
from decodelab.datasets.shapes import COLORS, NUMBER_WORDS, PLURALS, RELATIONS, SHAPES
from decodelab.neuro.incontext import (
    InContextDecoder,
    SubjectData,
    SyntheticVoxelPrior,
    create_incontext,
    encoder_correlations,
    invert_encoders,
    ridge_voxel_encoders,
    train_inversion_decoder,
    train_voxel_encoder,
)
from decodelab.neuro.ridge import MultiTargetRidgeCV
from decodelab.neuro.runs.fmri import derangement
from decodelab.neuro.simulate_fmri import CAPTIONS_FILE, read_simulation, world_captions

__all__ = [
    "ALPHAS",
    "DIAGNOSTICS",
    "K_VALUES",
    "SubjectArrays",
    "aligned_ridge",
    "caption_experiment",
    "decode_captions",
    "image_embeddings",
    "k_sweep",
    "load_subjects",
    "meta_train",
    "noise_ceiling_r",
    "plot_k_sweep",
    "retrieval_scores",
    "ridge_on_k",
    "shapes_grammar_captions",
]

K_VALUES: tuple[int, ...] = (30, 100, 300, 700)
#: Sizes of the CPU runs (narrower than the ``small`` preset, for a shared 2-core machine).
SMALL_CPU: dict[str, dict] = {
    "encoder": dict(hidden=32, depth=2, heads=4, num_registers=4),
    "decoder": dict(hidden=32, depth=2, heads=4, num_registers=8, num_merged=2),
}
ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-1, 6, 15))
EMBEDDINGS = {"fmnist": "fmnist-classifier penultimate features (128-d)", "shapes": "MiniLM caption embedding (384-d)"}


# ------------------------------------------------------------------------------------------- data
@dataclass
class SubjectArrays:
    """One subject: raw repeat-averaged betas (``/300``) and the image embeddings of its images.

    Attributes:
        train_x: ``[n_train, V]``; test_x: ``[n_test, V]`` (the shared test images, same order for all).
        train_e, test_e: ``[n, E]`` image embeddings (not yet centred).
        test_ids: 0-based stimulus ids of the test images.
        test_repeats: trials averaged per test image (``None``: unknown).
        ncsnr: ``[V]`` single-trial noise-ceiling SNR of the voxels, read from the tree's ``ncsnr.nii.gz``
            when it has one (NSD and the simulation write it; ``None`` otherwise).
    """

    subject: int
    train_x: np.ndarray
    test_x: np.ndarray
    train_e: np.ndarray
    test_e: np.ndarray
    test_ids: np.ndarray
    test_repeats: np.ndarray | None = None
    ncsnr: np.ndarray | None = None

    @property
    def n_voxels(self) -> int:
        return int(self.train_x.shape[1])


def image_embeddings(world: str, images: np.ndarray, captions: list[list[str]], text_encoder: Any = None) -> np.ndarray:
    """The embedding the world's decoder targets (see :data:`EMBEDDINGS`): ``[N, E]`` float64."""
    if world == "fmnist":
        from decodelab.eval.fmnist import features

        return features(images)
    if world == "shapes":
        return world_captions(captions, text_encoder)
    raise ValueError(f"unknown world {world!r}; choose from {', '.join(EMBEDDINGS)}")


def load_subjects(
    root: str | os.PathLike[str], subjects: Sequence[int], *, world: str | None = None, text_encoder: Any = None
) -> dict[int, SubjectArrays]:
    """Read subjects with the NSD loaders (settings from ``simulation.json``) and embed their images."""
    root = find_nsd(root)
    sim = read_simulation(root) if (root / "simulation.json").is_file() else {}
    world = world or sim.get("world")
    if world not in EMBEDDINGS:
        raise ValueError(f"world must be one of {', '.join(EMBEDDINGS)} (got {world!r}); pass world=")
    out = {}
    for s in subjects:
        split = load_nsd_split(
            root, s, sessions=sim.get("sessions", 37), trials_per_session=sim.get("trials_per_session", 750)
        )
        paths = NSDPaths(root, s)
        emb = []
        for ids in (split.train_ids, split.test_ids):
            caps = load_captions(root / CAPTIONS_FILE, ids) if world == "shapes" else [[""]] * len(ids)
            imgs = load_stimuli(paths.stimuli, ids) if world == "fmnist" else None
            emb.append(image_embeddings(world, imgs, caps, text_encoder))
        out[int(s)] = SubjectArrays(
            int(s), split.train, split.test, emb[0], emb[1], split.test_ids, split.test_repeats, _read_ncsnr(paths)
        )
    return out


def _read_ncsnr(paths: NSDPaths) -> np.ndarray | None:
    """The ROI voxels' ``ncsnr`` (NSD's ``betas_*/ncsnr.nii.gz``) in the loaders' voxel order; ``None`` if absent."""
    import nibabel as nib

    from decodelab.datasets.nsd import load_roi_mask

    path = paths.betas(1).parent / "ncsnr.nii.gz"
    if not path.is_file():
        return None
    vol = np.asanyarray(nib.load(path).dataobj)
    mask = load_roi_mask(paths.roi())
    return np.asarray(vol[mask], dtype=np.float64) if vol.shape == mask.shape else None


def noise_ceiling_r(ncsnr: np.ndarray, n_repeats: np.ndarray | float) -> np.ndarray:
    """The highest correlation any prediction of the noise-free response can reach with a ``n``-repeat average.

    With single-trial ``ncsnr = sd(signal) / sd(noise)`` (NSD's definition), the average of ``n``
    repeats correlates with the signal at ``ncsnr / sqrt(ncsnr^2 + 1 / n)`` (NSD's noise ceiling,
    ``100 ncsnr^2 / (ncsnr^2 + 1 / n)`` %, is its square).
    """
    c = np.asarray(ncsnr, dtype=np.float64)
    return c / np.sqrt(c**2 + 1.0 / np.asarray(n_repeats, dtype=np.float64))


def _zscore(fit: np.ndarray, *xs: np.ndarray) -> list[np.ndarray]:
    mu, sd = fit.mean(0), fit.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    return [(x - mu) / sd for x in (fit, *xs)]


# ---------------------------------------------------------------------------------------- metrics
def retrieval_scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Top-1 / top-5 retrieval of row ``i`` of ``true`` by row ``i`` of ``pred`` (cosine, ties shared)."""
    from decodelab.eval.meg import cosine_similarity, retrieval_ranks, top_k_accuracy

    ranks = retrieval_ranks(cosine_similarity(pred, true), np.arange(len(true)))
    return {"top1": top_k_accuracy(ranks, 1), "top5": top_k_accuracy(ranks, 5), "mean_rank": float(ranks.mean())}


# -------------------------------------------------------------------------------------- baselines
def ridge_on_k(
    ctx_x: np.ndarray, ctx_e: np.ndarray, test_x: np.ndarray, alphas: Sequence[float] = ALPHAS
) -> np.ndarray:
    """Ridge (alpha by leave-one-out on the context) from the context's betas to embeddings; test predictions."""
    return MultiTargetRidgeCV(alphas=tuple(alphas)).fit(ctx_x, ctx_e).predict(test_x)


def aligned_ridge(
    others: Sequence[tuple[np.ndarray, np.ndarray]],
    ctx_x: np.ndarray,
    ctx_e: np.ndarray,
    test_x: np.ndarray,
    alphas: Sequence[float] = ALPHAS,
) -> np.ndarray:
    """Training subjects' ridge decoders applied after functional alignment on the ``K`` context images.

    Args:
        others: per training subject ``(z-scored betas [n, V_s], centred embeddings [n, E])``.
        ctx_x, ctx_e: the held-out subject's context betas ``[K, V]`` and embeddings ``[K, E]``.
        test_x: its test betas ``[M, V]``.
    """
    preds = []
    for x_s, e_s in others:
        decoder = MultiTargetRidgeCV(alphas=tuple(alphas)).fit(x_s, e_s)
        encoder = MultiTargetRidgeCV(alphas=tuple(alphas)).fit(e_s, x_s)
        shared = encoder.predict(ctx_e)  # [K, V_s]: s's predicted responses to the context images
        align = MultiTargetRidgeCV(alphas=tuple(alphas)).fit(ctx_x, shared)
        preds.append(decoder.predict(align.predict(test_x)))
    return np.mean(preds, axis=0)


# ----------------------------------------------------------------------------------- meta-training
def meta_train(
    train: Sequence[SubjectData],
    embed_dim: int,
    *,
    preset: str = "small",
    overrides: dict[str, dict] | None = None,
    steps_encoder: int = 300,
    steps_pretrain: int = 300,
    steps_meta: int = 300,
    context_range: tuple[int, int] = (30, 300),
    meta_contexts: Sequence[int] = (30, 100, 300),
    n_voxels_encoder: int = 16,
    n_images: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[InContextDecoder, dict[str, Any]]:
    """Stage 1 on the training subjects, prior fit, stage-2 synthetic pretraining, stage-2 meta-training.

    Returns:
        The two-stage decoder and a record (prior moments, final losses, seconds per phase).
    """
    if not train:
        raise ValueError("meta-training needs at least one training subject")
    torch.manual_seed(seed)
    overrides = SMALL_CPU if overrides is None else overrides
    model = create_incontext(preset, embed_dim, **overrides)
    rec: dict[str, Any] = {"preset": preset, "overrides": overrides or {}}
    t0 = time.time()
    n_min = min(len(s.embeds) for s in train)
    n_query = min(64, n_min // 3)
    n_images = min(n_images, n_min // 3)
    hi = min(context_range[1], n_min - n_query)
    if hi < 2:
        raise ValueError(f"the training subjects need more images (smallest has {n_min})")
    l1 = train_voxel_encoder(
        model.encoder, None, None, subjects=train, steps=steps_encoder, context_range=(min(context_range[0], hi), hi),
        n_query=n_query, n_voxels=n_voxels_encoder, lr=lr, seed=seed, log=log, log_every=max(1, steps_encoder // 5),
    )  # fmt: skip
    rec["encoder_loss_last50"] = float(np.mean(l1[-50:]))
    rec["encoder_s"] = round(time.time() - t0, 1)
    # prior: stage-1 encoders of the training subjects' voxels, noise = their residual sd on held-out images
    ws, bs, resid = [], [], []
    for s in train:
        k = min(hi, len(s.embeds) // 2)
        e = torch.nn.functional.normalize(s.embeds, dim=-1)
        enc = model.encoder.infer(e[:k], s.betas[:k])
        ws.append(enc.weight)
        bs.append(enc.bias)
        resid.append((enc.predict(e[k:]).T - s.betas[k:]).flatten())
    noise = float(torch.cat(resid).std())
    prior = SyntheticVoxelPrior.fit(torch.cat(ws), torch.cat(bs), noise_std=noise, shrinkage=0.1)
    rec["prior"] = {
        "noise_std": noise,
        "mean_b": prior.mean_b,
        "std_b": prior.std_b,
        "trace_cov_w": float(torch.trace(prior.cov_w)),
        "n_voxels": int(sum(len(w) for w in ws)),
    }
    pool = torch.cat([s.embeds for s in train])
    v_hi = min(s.betas.shape[1] for s in train)
    v_range = (min(100, v_hi - 1), v_hi)
    t1 = time.time()
    l2 = train_inversion_decoder(
        model.decoder, pool, prior, steps=steps_pretrain, voxel_range=v_range, n_images=n_images, lr=lr, seed=seed + 1,
        log=log, log_every=max(1, steps_pretrain // 5),
    )  # fmt: skip
    rec["pretrain_loss_last50"] = float(np.mean(l2[-50:]))
    rec["pretrain_s"] = round(time.time() - t1, 1)
    t2 = time.time()
    per = max(1, steps_meta // len(meta_contexts))
    l3: list[float] = []
    for i, c in enumerate(meta_contexts):
        c = min(c, min(len(s.embeds) for s in train) - n_images)
        l3 += train_inversion_decoder(
            model.decoder, None, None, subjects=train, voxel_encoder=model.encoder, context_size=c, steps=per,
            voxel_range=v_range, n_images=n_images, lr=lr / 3, seed=seed + 2 + i, log=log, log_every=max(1, per // 2),
        )  # fmt: skip
    rec["meta_loss_last50"] = float(np.mean(l3[-50:]))
    rec["meta_s"] = round(time.time() - t2, 1)
    rec["voxel_range"] = list(v_range)
    model.eval()
    return model, rec


# ------------------------------------------------------------------------------------------ sweep
def k_sweep(
    root: str | os.PathLike[str],
    train_subjects: Sequence[int] = (1, 2, 5),
    heldout: int = 7,
    *,
    k_values: Sequence[int] = K_VALUES,
    world: str | None = None,
    embed_dim: int | None = 16,
    seed: int = 0,
    text_encoder: Any = None,
    diagnose: bool = False,
    log: Callable[[str], None] | None = None,
    **train_kwargs: Any,
) -> dict[str, Any]:
    """The K-sweep table: in-context decoder vs ridge-on-K vs aligned ridge on a held-out subject, with chance.

    Args:
        embed_dim: keep the first ``embed_dim`` principal axes of the (centred) embedding, fitted on the
            training subjects' images only (``None``: the full embedding). Every decoder predicts and
            is scored in that space.
        diagnose: add the rows of :data:`DIAGNOSTICS` to every ``K`` (which stage limits the
            in-context decoder); the other rows are unchanged.
        train_kwargs: :func:`meta_train`'s settings.
    """
    if heldout in train_subjects:
        raise ValueError(f"the held-out subject {heldout} is also a training subject {list(train_subjects)}")
    t0 = time.time()
    subs = load_subjects(root, [*train_subjects, heldout], world=world, text_encoder=text_encoder)
    h = subs[heldout]
    if max(k_values) > len(h.train_x):
        raise ValueError(
            f"K up to {max(k_values)} needs that many training images; subject {heldout} has {len(h.train_x)}"
        )
    pool = np.concatenate([subs[s].train_e for s in train_subjects])  # training subjects' images only
    mean_e = pool.mean(0)
    basis = np.eye(pool.shape[1])
    if embed_dim is not None:
        if not 1 <= embed_dim <= pool.shape[1]:
            raise ValueError(f"embed_dim must be in 1..{pool.shape[1]}, got {embed_dim}")
        basis = np.linalg.svd(pool - mean_e, full_matrices=False)[2][:embed_dim].T  # [E_full, E] principal axes

    def embed(e: np.ndarray) -> np.ndarray:
        return (e - mean_e) @ basis

    train_data, others = [], []
    for s in train_subjects:
        xs = _zscore(subs[s].train_x)[0]
        es = embed(subs[s].train_e)
        train_data.append(SubjectData(es, xs))
        others.append((xs, es))
    test_e = embed(h.test_e)
    model, rec = meta_train(train_data, test_e.shape[1], seed=seed, log=log, **train_kwargs)
    if diagnose:  # prior of e for the closed-form inversion: the training subjects' images only
        unit = torch.nn.functional.normalize(torch.as_tensor(embed(pool)), dim=-1)
        prior = (unit.mean(0), torch.cov(unit.T).reshape(unit.shape[1], unit.shape[1]))
        ceiling = None if h.ncsnr is None or h.test_repeats is None else noise_ceiling_r(h.ncsnr, h.test_repeats.mean())
    rows = []
    for k in k_values:
        ctx_x, test_x = _zscore(h.train_x[:k], h.test_x)
        ctx_e = embed(h.train_e[:k])
        t = time.time()
        pred_ic = model(torch.as_tensor(ctx_e).float(), torch.as_tensor(ctx_x).float(), torch.as_tensor(test_x).float())
        row = {"K": int(k), "incontext": retrieval_scores(pred_ic.numpy(), test_e)}
        row["incontext"]["seconds"] = round(time.time() - t, 2)
        row["ridge_on_k"] = retrieval_scores(ridge_on_k(ctx_x, ctx_e, test_x), test_e)
        row["aligned_ridge"] = retrieval_scores(aligned_ridge(others, ctx_x, ctx_e, test_x), test_e)
        if diagnose:
            row.update(_diagnose_k(model, ctx_e, ctx_x, test_e, test_x, prior, ceiling))
        rows.append(row)
        if log:
            methods = ("incontext", "ridge_on_k", "aligned_ridge", *(DIAGNOSTICS if diagnose else ()))
            log(f"K={k}: " + ", ".join(f"{m} top1 {row[m]['top1']:.3f}" for m in methods))
    n = len(test_e)
    sim = read_simulation(root) if (Path(root) / "simulation.json").is_file() else {}
    return {
        "world": world or sim.get("world"),
        "embedding": EMBEDDINGS[world or sim.get("world")],
        "embed_dim": int(test_e.shape[1]),
        "embedding_reduction": "none"
        if embed_dim is None
        else f"first {embed_dim} principal axes of the training subjects' image embeddings (centred)",
        "noise": sim.get("noise"),
        "train_subjects": list(train_subjects),
        "heldout": heldout,
        "n_voxels": {str(s): subs[s].n_voxels for s in subs},
        "ncsnr_median": {s: v.get("ncsnr_median") for s, v in sim.get("per_subject", {}).items()},
        "n_test": n,
        "chance": {"top1": 1 / n, "top5": min(5, n) / n},
        "alignment": "functional: ridge from the held-out voxels to each training subject's encoding-model-predicted "
        "responses to the K context images, then that subject's ridge decoder; averaged over training subjects",
        "rows": rows,
        **({"diagnostics": _diagnostics_record(h)} if diagnose else {}),
        "training": rec,
        "threads": torch.get_num_threads(),
        "wall_time_s": round(time.time() - t0, 1),
    }


#: The diagnostic rows of :func:`k_sweep` (``diagnose=True``), each scored like the others.
DIAGNOSTICS: dict[str, str] = {
    "stage2_ridge_encoders": "the trained stage 2 fed [w, b, beta] with w, b from closed-form per-voxel ridge "
    "(alpha per voxel by leave-one-out) on the same K context pairs (same unit-norm embedding, same z-scored "
    "voxels) instead of stage 1",
    "inversion_incontext_encoders": "no stage 2: closed-form Gaussian inversion (posterior mean of e) of the "
    "stage-1 encoders; noise variance = each voxel's residual variance on the K context pairs; prior of e = mean "
    "and covariance of the training subjects' unit-norm image embeddings",
    "inversion_ridge_encoders": "no stage 2: the same closed-form inversion of the per-voxel ridge encoders; noise "
    "variance = each voxel's leave-one-out error on the K context pairs",
}


def _diagnose_k(
    model: InContextDecoder,
    ctx_e: np.ndarray,
    ctx_x: np.ndarray,
    test_e: np.ndarray,
    test_x: np.ndarray,
    prior: tuple[torch.Tensor, torch.Tensor],
    ceiling: np.ndarray | None,
) -> dict[str, Any]:
    """The diagnostic rows of one ``K`` (:data:`DIAGNOSTICS`) and the encoders' quality (``encoder_r``)."""
    unit = torch.nn.functional.normalize
    ctx_n, test_n = unit(torch.as_tensor(ctx_e).float(), dim=-1), unit(torch.as_tensor(test_e).float(), dim=-1)
    ctx_b, test_b = torch.as_tensor(ctx_x).float(), torch.as_tensor(test_x).float()
    ic = model.encode_context(ctx_n, ctx_b)
    rr = ridge_voxel_encoders(ctx_n, ctx_b)
    ic_noise = (ic.predict(ctx_n).T - ctx_b).double().var(0).clamp(min=1e-6)
    out: dict[str, Any] = {
        "stage2_ridge_encoders": retrieval_scores(model.decode(rr, test_b).numpy(), test_e),
        "inversion_incontext_encoders": retrieval_scores(invert_encoders(ic, test_b, ic_noise, *prior).numpy(), test_e),
        "inversion_ridge_encoders": retrieval_scores(
            invert_encoders(rr, test_b, rr.loo_mse.clamp(min=1e-6), *prior).numpy(), test_e
        ),
    }
    quality: dict[str, Any] = {}
    for name, enc in (("incontext", ic), ("ridge", rr)):
        r = encoder_correlations(enc, test_n, test_b).numpy()
        w = enc.weight.double().numpy()
        lam = np.clip(np.linalg.eigvalsh(np.cov(w.T).reshape(w.shape[1], w.shape[1])), 0.0, None)
        quality[name] = {
            "median": float(np.median(r)),
            "mean": float(r.mean()),
            "frac_positive": float((r > 0).mean()),
            "w_norm_median": float(enc.weight.norm(dim=1).median()),
            # how different the voxels' encoders are: share of sum ||w_v||^2 that varies across voxels, and
            # the participation ratio of cov(w) over voxels (1: every voxel tuned along one direction; E: all)
            "w_spread": float(lam.sum() * (len(w) - 1) / len(w) / max(float(np.mean((w**2).sum(1))), 1e-300)),
            "w_dims": float(lam.sum() ** 2 / max(float((lam**2).sum()), 1e-300)),
        }
    quality["ridge"]["alpha_median"] = float(rr.alpha.median())
    if ceiling is not None:
        quality["noise_ceiling"] = {"median": float(np.median(ceiling)), "mean": float(ceiling.mean())}
    out["encoder_r"] = quality
    return out


def _diagnostics_record(h: SubjectArrays) -> dict[str, Any]:
    return {
        **DIAGNOSTICS,
        "encoder_r": "per-voxel Pearson r over the held-out subject's test images between each encoder's predicted "
        "responses (w . e + b, e unit-norm) and its repeat-averaged test betas; median / mean over voxels. "
        "noise_ceiling: ncsnr / sqrt(ncsnr^2 + 1 / n_repeats), the highest r any prediction of the noise-free "
        "response can reach. w_spread: trace of the encoders' covariance over voxels / mean ||w_v||^2; w_dims: its "
        "participation ratio (sum lambda)^2 / sum lambda^2, from 1 (all voxels tuned along one direction) to E",
        "stage2_true_encoders": "not run: the simulation writes no per-voxel encoders, and its encoding model "
        "(square-root-compressed receptive-field drive of the pixels plus a random projection of the MiniLM "
        "class-caption embedding, z-scored and mixed) is not linear in the embedding decoded here (PCA of the "
        "fmnist classifier's features), so no true (w, b) exists in this space",
        "test_repeats": None if h.test_repeats is None else float(np.mean(h.test_repeats)),
    }


def plot_k_sweep(results: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Top-1 and top-5 retrieval against K for the three decoders, with chance (matplotlib PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["K"] for r in results["rows"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6 if "stage2_ridge_encoders" in results["rows"][0] else 3.6))
    names = {"incontext": "in-context (no fine-tuning)", "ridge_on_k": "ridge on K", "aligned_ridge": "aligned ridge"}
    diag = {
        "stage2_ridge_encoders": "diag: stage 2 on ridge encoders",
        "inversion_incontext_encoders": "diag: closed-form inversion, stage-1 encoders",
        "inversion_ridge_encoders": "diag: closed-form inversion, ridge encoders",
    }
    names |= {k: v for k, v in diag.items() if k in results["rows"][0]}
    for ax, metric in zip(axes, ("top1", "top5")):
        for key, label in names.items():
            ls = ":" if key in diag else "-"
            ax.plot(ks, [r[key][metric] for r in results["rows"]], marker="o", ls=ls, label=label)
        ax.axhline(results["chance"][metric], color="grey", ls="--", label="chance")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("context size K (held-out subject)")
        ax.set_ylabel(f"{metric} retrieval ({results['n_test']} images)")
    fig.suptitle(f"held-out subject {results['heldout']} ({results['world']} world, noise {results['noise']})")
    if len(names) > 3:  # diagnostic rows: one legend below both panels
        fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
        fig.tight_layout(rect=(0, 0.16, 1, 1))
    else:
        axes[0].legend(fontsize=8)
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------------- captioning
def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def shapes_grammar_captions(max_count: int = 4) -> list[str]:
    """Every caption the shapes world's grammar can produce (the six GenEval templates), in a fixed order."""
    if not 2 <= max_count < len(NUMBER_WORDS):
        raise ValueError(f"max_count must be in 2..{len(NUMBER_WORDS) - 1}, got {max_count}")
    out = [f"a photo of {_a(a)}" for a in SHAPES]
    out += [f"a photo of {_a(a)} and {_a(b)}" for a in SHAPES for b in SHAPES if a != b]
    out += [f"a photo of {NUMBER_WORDS[n]} {PLURALS[a]}" for a in SHAPES for n in range(2, max_count + 1)]
    out += [f"a photo of {_a(c)} {a}" for a in SHAPES for c in COLORS]
    out += [f"a photo of {_a(a)} {r} {_a(b)}" for a in SHAPES for b in SHAPES if a != b for r in RELATIONS]
    out += [
        f"a photo of {_a(ca)} {a} and {_a(cb)} {b}"
        for a in SHAPES for b in SHAPES if a != b for ca in COLORS for cb in COLORS if ca != cb
    ]  # fmt: skip
    return out


def decode_captions(pred: np.ndarray, bank: np.ndarray, captions: Sequence[str], centre: np.ndarray) -> list[str]:
    """Nearest caption (cosine after subtracting ``centre``) of each predicted embedding."""
    p = pred - centre
    b = bank - centre
    p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return [captions[i] for i in np.argmax(p @ b.T, axis=1)]


def _caption_grid(true_imgs, true_caps, dec_caps, gen_imgs, path: Path, n: int = 8) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(true_imgs))
    fig, axes = plt.subplots(2, n, figsize=(2.1 * n, 5.2))
    axes = np.asarray(axes).reshape(2, n)
    for c in range(n):
        for r, (img, cap, head) in enumerate(
            ((true_imgs[c], true_caps[c], "true"), (gen_imgs[c], dec_caps[c], "decoded"))
        ):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{head}: " + cap.replace("a photo of ", ""), fontsize=7, wrap=True)
    axes[0, 0].set_ylabel("true image", fontsize=8)
    axes[1, 0].set_ylabel("generated from\ndecoded caption", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def caption_experiment(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    subject: int = 1,
    *,
    pipeline: Any = "shapes-t2i",
    seed: int = 0,
    sentence_model: Any = None,
    text_encoder: Any = None,
    n_grid: int = 8,
    prefix: str = "neuro_captioning",
    grammar: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Brain captioning on a simulated shapes-world NSD tree; writes ``<prefix>.json`` and ``<prefix>_grid.png``.

    Args:
        pipeline: a loaded text-to-image pipeline or a name for :func:`decodelab.vision.pipeline.load_pipeline`.
        sentence_model: the sentence encoder of the caption cosine (default: the shipped MiniLM-L6).
        text_encoder: the MiniLM :class:`~decodelab.vision.text_encoder.TextEncoder` of the caption embeddings.
        grammar: the captions decoded over (default: :func:`shapes_grammar_captions`, all 1280).
    """
    from decodelab.eval.captions import SentenceEncoder, caption_metrics, parse_shapes_caption, shapes_caption_scores
    from decodelab.eval.shapes_geneval import score_batch
    from decodelab.vision.pipeline import load_pipeline

    t0 = time.time()
    root = find_nsd(root)
    sim = read_simulation(root) if (root / "simulation.json").is_file() else {}
    if sim.get("world", "shapes") != "shapes":
        raise ValueError(f"brain captioning needs a shapes-world tree; {root} simulates {sim.get('world')!r}")
    split = load_nsd_split(
        root, subject, sessions=sim.get("sessions", 37), trials_per_session=sim.get("trials_per_session", 750)
    )
    train_caps = load_captions(root / CAPTIONS_FILE, split.train_ids)
    test_caps = load_captions(root / CAPTIONS_FILE, split.test_ids)
    true = [c[0] for c in test_caps]
    metas = [parse_shapes_caption(c) for c in true]
    if any(m is None for m in metas):
        raise ValueError("a test caption is not in the shapes-world grammar: is this a shapes-world simulation?")
    e_train = world_captions(train_caps, text_encoder)
    x_train, x_test = _zscore(split.train, split.test)
    ridge = MultiTargetRidgeCV(alphas=ALPHAS).fit(x_train, e_train)
    pred = ridge.predict(x_test)
    grammar = list(shapes_grammar_captions() if grammar is None else grammar)
    bank = world_captions([[c] for c in grammar], text_encoder)
    centre = e_train.mean(0)
    decoded = decode_captions(pred, bank, grammar, centre)
    perm = derangement(len(true), seed)
    sent = sentence_model if sentence_model is not None else SentenceEncoder()
    scores = shapes_caption_scores(decoded, metas)
    shuffled = shapes_caption_scores([decoded[i] for i in perm], metas)
    cap = caption_metrics(decoded, true, sentence_model=sent)
    cap_chance = caption_metrics([decoded[i] for i in perm], true, sentence_model=sent)
    pipe = pipeline if hasattr(pipeline, "tokenizer") else load_pipeline(pipeline)
    t1 = time.time()
    gen = pipe(prompts=decoded, seed=seed)
    gen_imgs = [np.asarray(im.convert("RGB")) for im in gen.images]
    gen_s = time.time() - t1
    true_imgs = load_stimuli(NSDPaths(root, subject).stimuli, split.test_ids)
    img = score_batch(gen_imgs, metas)
    img_chance = score_batch([gen_imgs[i] for i in perm], metas)
    img_ceiling = score_batch(list(true_imgs), metas)
    attrs = ("object", "count", "colour", "position", "exact")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = _caption_grid(true_imgs, true, decoded, gen_imgs, out_dir / f"{prefix}_grid.png", n_grid)
    res = {
        "subject": subject,
        "world": "shapes",
        "noise": sim.get("noise"),
        "n_train": int(len(x_train)),
        "n_test": int(len(x_test)),
        "n_voxels": int(x_train.shape[1]),
        "ridge_alpha": float(ridge.alpha_[0]),
        "grammar_size": len(grammar),
        "caption_attributes": {a: scores[a] for a in attrs} | {f"n_{a}": scores[f"n_{a}"] for a in attrs},
        "caption_attributes_chance_shuffled": {a: shuffled[a] for a in attrs},
        "caption_attributes_chance_uniform_grammar": _uniform_chance(grammar, metas),
        "caption_metrics": cap,
        "caption_metrics_chance_shuffled": cap_chance,
        "image_geneval_vs_true_caption": {
            "overall": img["overall"],
            "image_accuracy": img["image_accuracy"],
            "per_task": img["per_task"],
        },  # fmt: skip
        "image_geneval_chance_shuffled": {
            "overall": img_chance["overall"],
            "image_accuracy": img_chance["image_accuracy"],
        },
        "image_geneval_true_images_ceiling": {
            "overall": img_ceiling["overall"],
            "image_accuracy": img_ceiling["image_accuracy"],
        },
        "examples": [{"true": t, "decoded": d} for t, d in zip(true[:n_grid], decoded[:n_grid])],
        "grid": grid.name,
        "generation_s": round(gen_s, 1),
        "threads": torch.get_num_threads(),
        "wall_time_s": round(time.time() - t0, 1),
    }
    (out_dir / f"{prefix}.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


def _uniform_chance(grammar: Sequence[str], metas: Sequence[dict[str, Any]], n: int = 2000, seed: int = 0) -> dict:
    """Attribute accuracy of captions drawn uniformly from the grammar (``n`` draws per test caption, pooled)."""
    from decodelab.eval.captions import shapes_caption_scores

    rng = np.random.default_rng(seed)
    reps = max(1, n // max(1, len(metas)))
    preds = [grammar[i] for i in rng.integers(len(grammar), size=reps * len(metas))]
    s = shapes_caption_scores(preds, list(metas) * reps)
    return {a: s[a] for a in ("object", "count", "colour", "position", "exact")}
