"""``decodelab demo``: the shipped generators decoded by every registered decoder, offline.

For each shipped pipeline (or, when none is installed, the tiny *untrained* ``test-c2i``, clearly
labelled), the demo generates a fixed set of classes / prompts with every image-token decoder on
the same seeds, prints a table (forwards, step compression, wall-clock speed-up, accepted tokens per
forward, and the domain quality metrics available for that world), and writes an HTML report with
each decoder's images (each under its prompt or class), a chart of tokens accepted per forward, and
a restoration section: a held-out bundled photo (never trained on) with synthetic rain, derained by
the shipped derainer, and its x4 bicubic down-sampling restored by bicubic and by ``upscale``'s
default model, each with its RGB PSNR against the clean photo; and a brain-decoding section: a
small simulated NSD subject (Fashion-MNIST world, noise calibrated to NSD) decoded by the embedded
two-stage fMRI pipeline, with its metrics against a shuffled-pairing baseline and an image grid.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

DEMO_DEFAULT_DECODERS = "ar,jacobi,sjd,sjd:init=vertical,sjd_coupled"
#: added for pipelines whose MuLo-SD drafter is installed (the shipped ``*-lowres`` assets)
DEMO_MULO_DECODER = "mulo:tau=0.02:k=16:drafter_decoder=sjd_coupled:refresh=False"
#: decoders of next-neighbour (NAR) pipelines, whose reference is ``nar`` (``ar`` cannot run on them);
#: ``nar_sjd`` (slower than ``nar`` on the shipped models, README) is left out to keep the demo under 5 minutes
DEMO_NAR_DECODERS = "nar"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run every decoder on the shipped models and write an HTML report",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="demo_out", help="report directory")
    p.add_argument("--model", action="append", help="pipeline(s) to use (default: all shipped)")
    p.add_argument("--decoders", default=DEMO_DEFAULT_DECODERS, help="comma list, options as name:key=value")
    p.add_argument("--mulo", default=DEMO_MULO_DECODER,
                   help="MuLo-SD item added for pipelines whose drafter is installed ('' to skip)")  # fmt: skip
    p.add_argument("--num-images", type=int, default=20, help="images per decoder and model")
    p.add_argument("--batch-size", type=int, default=1, help="1 = the latency setting of the SJD paper")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 at --batch-size 1, measured faster there)")  # fmt: skip
    p.add_argument("--no-restoration", action="store_true", help="skip the deraining / upscaling section")
    p.add_argument("--no-brain", action="store_true", help="skip the simulated fMRI decoding section")
    p.set_defaults(func=run)


def image_grid(images: list[Image.Image], cols: int, scale: int = 2) -> Image.Image:
    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * w * scale, rows * h * scale), (255, 255, 255))
    for i, im in enumerate(images):
        grid.paste(
            im.convert("RGB").resize((w * scale, h * scale), Image.NEAREST),
            ((i % cols) * w * scale, (i // cols) * h * scale),
        )
    return grid


def _caption(label: Any, pipe) -> str:
    """What an image was generated from: its prompt, or its class (name when the pipeline has them)."""
    if isinstance(label, dict):
        return str(label["prompt"])
    if isinstance(label, str):
        return label
    names = pipe.info.get("class_names")
    return f"class {label}" + (f" ({names[label]})" if names and 0 <= label < len(names) else "")


def _png_data_uri(im: Image.Image, scale: int = 2) -> str:
    buf = io.BytesIO()
    im.convert("RGB").resize((im.width * scale, im.height * scale), Image.NEAREST).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def captioned_gallery(images: list[Image.Image], captions: list[str]) -> str:
    """HTML figures, each image with its prompt / class written under it."""
    return (
        "<div class='gallery'>"
        + "".join(
            f"<figure class='cap'><img src='{_png_data_uri(im)}' alt='{html.escape(c)}'>"
            f"<figcaption>{html.escape(c)}</figcaption></figure>"
            for im, c in zip(images, captions)
        )
        + "</div>"
    )


def histogram_svg(hists: dict[str, dict[int, int]], width: int = 560, height: int = 220) -> str:
    """Grouped bar chart (share of forwards by tokens accepted), written as plain SVG.

    At most about 12 x-axis numbers (a decoder that fixes 200 tokens in one forward would otherwise
    print 200 overlapping labels), and the legend wraps three names to a row.
    """
    labels = list(hists)
    max_k = max((max(h) for h in hists.values() if h), default=1)
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3"]
    pad, bw = 30, (width - 60) / (max_k * max(len(labels), 1))
    per_row = 3
    legend_rows = -(-len(labels) // per_row)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 24 + 16 * legend_rows}">']
    for li, label in enumerate(labels):
        h = hists[label]
        total = sum(h.values()) or 1
        for k in range(1, max_k + 1):
            frac = h.get(k, 0) / total
            x = pad + ((k - 1) * len(labels) + li) * bw
            bh = frac * (height - 20)
            parts.append(f'<rect x="{x:.1f}" y="{height - bh:.1f}" width="{bw * 0.9:.1f}" height="{bh:.1f}" '
                         f'fill="{colors[li % len(colors)]}"><title>{html.escape(label)}: {k} tokens, '
                         f'{100 * frac:.1f}%</title></rect>')  # fmt: skip
        lx, ly = pad + (li % per_row) * (width - pad) / per_row, height + 32 + 16 * (li // per_row)
        parts.append(f'<text x="{lx:.1f}" y="{ly}" font-size="11" '
                     f'fill="{colors[li % len(colors)]}">{html.escape(label)}</text>')  # fmt: skip
    step = max(1, -(-max_k // 12))
    for k in range(1, max_k + 1):
        if (k - 1) % step and k != max_k:
            continue
        x = pad + ((k - 1) * len(labels) + len(labels) / 2) * bw
        parts.append(f'<text x="{x:.1f}" y="{height + 14}" font-size="10" text-anchor="middle">{k}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _conditions(pipe, num_images: int) -> list[Any]:
    """The demo's fixed conditions: every class in turn, or GenEval-style prompts of every family."""
    if pipe.condition_kind == "class":
        return [i % pipe.num_classes for i in range(num_images)]
    if pipe.info.get("world") == "shapes_world":
        from decodelab.datasets.shapes import VOCAB, make_prompt_set

        families = list(VOCAB["families"])
        per_family = -(-num_images // len(families))
        metas = make_prompt_set(per_family, seed=2024)
        return [metas[(i % len(families)) * per_family + i // len(families)] for i in range(num_images)]
    prompts = pipe.info.get("demo_prompts") or ["a photo of a red circle", "a photo of a blue square"]
    return [prompts[i % len(prompts)] for i in range(num_images)]


def _with_mulo(pipe, decoders: str, mulo: str) -> str:
    """``decoders`` plus the MuLo-SD item when ``pipe``'s drafter is installed (else says why it is left out)."""
    if not mulo or "mulo" in [d.split(":")[0] for d in decoders.split(",")]:
        return decoders
    if pipe.drafter_source is None:
        return decoders
    try:
        pipe.drafter  # noqa: B018  (loads and checks it)
    except (FileNotFoundError, ValueError) as e:
        print(f"decodelab demo: {pipe.name}: mulo left out ({e})")
        return decoders
    return f"{decoders},{mulo}"


def _quality(name: str, pipe, images: list[Image.Image], conds: list[Any]) -> dict[str, float]:
    """Domain metrics available for this world (empty when none applies)."""
    from decodelab.eval.domain import evaluate_generated

    return evaluate_generated(pipe, images, conds)


def run(args: argparse.Namespace) -> int:
    from decodelab.cli.bench import default_threads, torch_threads

    with torch_threads(default_threads(args.threads, args.batch_size)):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from decodelab.assets import available
    from decodelab.cli.bench import parse_decoder_list, run_components
    from decodelab.vision.bench import benchmark_decoders, benchmark_runs, format_table
    from decodelab.vision.pipeline import DEFAULT_DRAFTERS, load_pipeline, tensor_to_pil

    # drafters are shown through the pipelines they draft for, not as pipelines of their own
    names = args.model or [n for n in available() if n not in DEFAULT_DRAFTERS.values()]
    untrained = not names
    if untrained:
        names = ["test-c2i"]
        print("decodelab demo: no shipped trained model is installed; using the tiny UNTRAINED 'test-c2i' "
              "pipeline (random weights): images are noise and speed-ups are not representative.")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections, summary = [], {"threads": torch.get_num_threads()}
    t_start = time.perf_counter()
    for name in names:
        pipe = load_pipeline(name)
        labels = _conditions(pipe, args.num_images)
        conds, mask = pipe.encode_conditions([m["prompt"] if isinstance(m, dict) else m for m in labels])
        sampling = pipe.sampling_config()
        if pipe.model.generation_order.name == "raster":
            specs = parse_decoder_list(_with_mulo(pipe, args.decoders, args.mulo), {})
            components = {label: run_components(pipe, spec) for label, spec in specs.items()}
            report = benchmark_decoders(pipe.model, conds, specs, sampling=sampling, seed=args.seed,
                                        batch_size=args.batch_size, repeats=1, cond_mask=mask,
                                        components=components)  # fmt: skip
        else:  # e.g. NAR's next-neighbour order: its own decoders, relative to the first
            labels_ = [d.strip() for d in DEMO_NAR_DECODERS.split(",")]
            runs = {label: {"model": pipe.model, "spec": {"name": label}, "conds": conds, "cond_mask": mask}
                    for label in labels_}  # fmt: skip
            report = benchmark_runs(runs, labels_[0], sampling=sampling, seed=args.seed,
                                    batch_size=args.batch_size, repeats=1)  # fmt: skip
        trained = bool(pipe.info.get("trained", False))
        print(f"\n== {name} ({'trained' if trained else 'UNTRAINED'}) — {args.num_images} images, batch "
              f"{args.batch_size}, seed {args.seed}, sampling {vars(sampling)}")  # fmt: skip
        rows = []
        captions = [_caption(c, pipe) for c in labels]
        for label, r in report["decoders"].items():
            with torch.no_grad():
                imgs = tensor_to_pil(pipe.tokenizer.decode(r["tokens"]))
            grid_file = f"{name}_{label.replace(':', '_').replace('=', '-')}.png"
            image_grid(imgs, cols=min(10, len(imgs))).save(out / grid_file)
            quality = _quality(name, pipe, imgs, labels)
            r["quality"] = quality
            r["gallery"] = captioned_gallery(imgs, captions)
            rows.append((label, r, grid_file))
        print(format_table(report))
        if any(r["quality"] for _, r, _ in rows):
            print(f"  quality on {args.num_images} images per decoder (FID on so few images is biased upward; "
                  "`decodelab eval` gives the 1000-image numbers):")  # fmt: skip
        for label, r, _ in rows:
            if r["quality"]:
                print(f"  {label:26s} " + "  ".join(f"{k}={v:.3f}" for k, v in r["quality"].items()))
        summary[name] = {"trained": trained, "sampling": vars(sampling), "captions": captions, "decoders": {
            label: {k: v for k, v in r.items() if k not in ("tokens", "gallery")} for label, r, _ in rows}}  # fmt: skip
        sections.append(_section_html(name, trained, rows, report))
    if not args.no_restoration:
        restoration, section = restoration_section(out)
        summary["restoration"] = restoration
        sections.append(section)
    if not args.no_brain:
        brain, section = brain_section(out, seed=args.seed)
        summary["brain"] = brain
        sections.append(section)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "index.html").write_text(_page_html(sections, untrained))
    print(f"\nwrote {out / 'index.html'} and summary.json in {time.perf_counter() - t_start:.0f}s")
    return 0


# ------------------------------------------------------------------------------------ restoration
#: the held-out photo of the restoration section (bundled ``test`` split: never used in training)
RESTORATION_PHOTO, RESTORATION_CROP, RESTORATION_SCALE, RESTORATION_RAIN_SEED = "coffee", 384, 4, 2024


def _to_pil(img: Tensor) -> Image.Image:
    """``[3, H, W]`` in ``[0, 1]`` -> an RGB PIL image."""
    return Image.fromarray((img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())


def restoration_section(out: Path) -> tuple[dict[str, Any], str]:
    """Derain and x4-upscale one held-out photo with the shipped defaults; ``(summary, html)``.

    The clean photo is the centre ``RESTORATION_CROP``-pixel square of a bundled test photo. Rain is
    :func:`decodelab.derain.synth.add_rain` (style ``mixed``, seed ``RESTORATION_RAIN_SEED``); the
    low-resolution input is its MATLAB-style bicubic down-sampling by ``RESTORATION_SCALE``
    (:func:`decodelab.datasets.sr.make_lr`). A missing shipped model skips its row with the reason.
    """
    from decodelab.datasets.photos import BundledPhotos
    from decodelab.datasets.sr import make_lr
    from decodelab.derain.synth import add_rain
    from decodelab.eval.quality import psnr
    from decodelab.vision.lsr.evaluate import BicubicBaseline, center_crop

    t0 = time.perf_counter()
    photos = BundledPhotos("test")
    clean = center_crop(photos[photos.names.index(RESTORATION_PHOTO)], RESTORATION_CROP)  # [3, S, S]
    s = RESTORATION_SCALE
    clean, lr = make_lr(clean, s)  # [3, S, S], [3, S/s, S/s]
    rainy = add_rain(clean[None], torch.Generator().manual_seed(RESTORATION_RAIN_SEED), "mixed")[0]
    size = tuple(clean.shape[-2:])
    results: dict[str, Any] = {"photo": RESTORATION_PHOTO, "crop": RESTORATION_CROP, "scale": s,
                               "rain_seed": RESTORATION_RAIN_SEED, "psnr_rgb": {}, "skipped": {}}  # fmt: skip
    images = {"clean": clean, "rainy": rainy, f"low resolution (1/{s})": lr}

    def record(key: str, img: Tensor) -> None:
        images[key] = img
        results["psnr_rgb"][key] = round(float(psnr(img[None].clamp(0, 1), clean[None])), 2)

    record("rainy", rainy)
    try:
        from decodelab.derain.infer import derain, load_derainer

        derainer = load_derainer()
        with torch.no_grad():
            record("derained (mcwnet-small-synthetic)", derain(derainer, rainy))
    except FileNotFoundError as e:
        results["skipped"]["derain"] = str(e)
    with torch.no_grad():
        record(f"bicubic x{s}", BicubicBaseline().render(lr[None], size)[0])
    try:
        from decodelab.cli.lsr import DEFAULT_MODELS, load_model
        from decodelab.vision.lsr.render import render_tiled

        model = load_model(None, "upscale").eval()
        with torch.no_grad():
            record(f"upscale x{s} ({DEFAULT_MODELS['upscale']})", render_tiled(model, lr, size)[0])
    except FileNotFoundError as e:
        results["skipped"]["upscale"] = str(e)
    results["seconds"] = round(time.perf_counter() - t0, 1)

    print(f"\n== restoration: held-out photo {RESTORATION_PHOTO!r} ({size[1]}x{size[0]} centre crop), RGB PSNR "
          "against the clean photo")  # fmt: skip
    for key, value in results["psnr_rgb"].items():
        print(f"  {key:42s} {value:6.2f} dB")
    for key, why in results["skipped"].items():
        print(f"  {key}: skipped ({why})")
    figures = []
    for key, img in images.items():
        file = "restoration_" + "".join(c if c.isalnum() else "_" for c in key.split(" (")[0]) + ".png"
        _to_pil(img).save(out / file)
        value = results["psnr_rgb"].get(key)
        cap = key + ("" if value is None else f": {value:.2f} dB")
        figures.append(f"<figure><img src='{file}' width='{size[1]}'><figcaption>{html.escape(cap)}</figcaption>"
                       "</figure>")  # fmt: skip
    skipped = "".join(f"<p class='warn'>{html.escape(k)} skipped: {html.escape(v)}</p>"
                      for k, v in results["skipped"].items())  # fmt: skip
    section = (f"<h2>Restoration on a held-out photo</h2><p>{html.escape(RESTORATION_PHOTO)} (bundled test photo, "
               f"never used in training), centre {size[1]}x{size[0]} crop. Synthetic rain (style mixed, seed "
               f"{RESTORATION_RAIN_SEED}) removed by <code>decodelab derain</code>'s default model; its x{s} bicubic "
               f"down-sampling restored by bicubic interpolation and by <code>decodelab upscale</code>'s default "
               f"model. PSNR: RGB, against the clean crop.</p>{skipped}{''.join(figures)}")  # fmt: skip
    return results, section


# ------------------------------------------------------------------------------------------ brain
#: the simulated subject of the brain section: NSD's calibrated noise, 650 training / 20 test images
BRAIN_N_TRAIN, BRAIN_N_TEST, BRAIN_TRIALS_PER_SESSION, BRAIN_NOISE = 650, 20, 670, 1.0


def brain_section(out: Path, seed: int = 0) -> tuple[dict[str, Any], str]:
    """Simulate one NSD subject and decode its test images with the embedded fMRI pipeline; ``(summary, html)``.

    :func:`decodelab.neuro.simulate_fmri.simulate_nsd` writes the subject (Fashion-MNIST world, noise
    ``BRAIN_NOISE`` x NSD's calibrated level) under ``out/brain``; :func:`decodelab.neuro.runs.fmri.run_fmri`
    fits ridge, reconstructs (stage 1: tokenizer latents; stage 2: ``fmnist-c2i`` resampling) and
    scores. Missing data (Fashion-MNIST, the MiniLM text encoder, the shipped generator) skips the
    section with the reason.
    """
    import shutil

    from decodelab.neuro.runs.fmri import run_fmri
    from decodelab.neuro.simulate_fmri import simulate_nsd

    t0 = time.perf_counter()
    root, run_dir = out / "brain" / "nsd_sim", out / "brain" / "run"
    summary: dict[str, Any] = {"world": "fmnist", "noise": BRAIN_NOISE, "n_train": BRAIN_N_TRAIN,
                               "n_test": BRAIN_N_TEST}  # fmt: skip
    try:
        sim = simulate_nsd(root, (1,), world="fmnist", noise=BRAIN_NOISE, n_train=BRAIN_N_TRAIN, n_test=BRAIN_N_TEST,
                           trials_per_session=BRAIN_TRIALS_PER_SESSION, seed=seed, overwrite=True)  # fmt: skip
        res = run_fmri(run_dir, root, 1, seed=seed, overwrite=True)
    except (FileNotFoundError, ImportError) as e:
        summary["skipped"] = str(e)
        print(f"\n== brain decoding: skipped ({e})")
        return summary, f"<h2>Brain decoding (simulated fMRI)</h2><p class='warn'>skipped: {html.escape(str(e))}</p>"
    shutil.copyfile(run_dir / "grid.png", out / "brain_grid.png")
    net = next(k.removeprefix("twoway_") for k in res["stage2"] if k.startswith("twoway_") and not k.endswith("_ci95"))
    rows = {"stage 1 (tokenizer latents)": res["stage1"], "stage 2 (fmnist-c2i resampling)": res["stage2"],
            "shuffled pairing (stage 2)": res["stage2_shuffled"]}  # fmt: skip
    summary.update({"ncsnr_median": sim["per_subject"]["1"]["ncsnr_median"], "n_voxels": res["n_voxels"],
                    "decoded_class_accuracy": res.get("decoded_class_accuracy"),
                    "metrics": {k: {m: round(v[m], 4) for m in ("pixcorr", "ssim", f"twoway_{net}")}
                                for k, v in rows.items()},
                    "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
    print(f"\n== brain decoding: simulated NSD subject 1 ({res['n_voxels']} voxels, median ncsnr "
          f"{summary['ncsnr_median']:.2f}), {BRAIN_N_TRAIN} training / {BRAIN_N_TEST} test images")  # fmt: skip
    for key, m in summary["metrics"].items():
        print(f"  {key:34s} " + "  ".join(f"{k}={v:.3f}" for k, v in m.items()))
    body = "".join(f"<tr><td>{html.escape(k)}</td>" + "".join(f"<td>{v:.3f}</td>" for v in m.values()) + "</tr>"
                   for k, m in summary["metrics"].items())  # fmt: skip
    section = (f"<h2>Brain decoding (simulated fMRI)</h2><p>A simulated NSD subject ({res['n_voxels']} voxels, "
               f"Fashion-MNIST world, noise calibrated to NSD: median ncsnr {summary['ncsnr_median']:.2f}), "
               f"{BRAIN_N_TRAIN} training and {BRAIN_N_TEST} held-out test images, 3 repeats averaged; ridge to the "
               f"tokenizer's latents (stage 1) and the class embedding, then <code>fmnist-c2i</code> resampling 75% of "
               f"the stage-1 tokens (stage 2). Decoded class accuracy "
               f"{summary['decoded_class_accuracy'] or 0:.2f}. <code>decodelab neuro run-fmri</code> gives the "
               f"100-image numbers of the README.</p><table><tr><th></th><th>PixCorr</th><th>SSIM</th>"
               f"<th>2-way ({html.escape(net)})</th></tr>{body}</table><p>Ground truth above stage 1 and stage 2:</p>"
               f"<img src='brain_grid.png'>")  # fmt: skip
    return summary, section


#: the report's "output" column: what each decoder's tokens are, by its declared expectation
EXPECTATION_TEXT = {
    "reference": "sample (reference)",
    "lossless": "sample, same distribution as ar",
    "greedy_equals_ar": "greedy: argmax tokens of ar",
    "lossy": "approximate sample (lossy)",
}
GREEDY_NOTE = (
    "<p>Greedy decoding: every token is the model's most likely one (the same tokens as greedy "
    "<code>ar</code>), not a sample, so these images can look unlike the sampled rows (on "
    "<code>shapes-t2i</code> the most likely continuation is mostly empty background).</p>"
)


def _section_html(name: str, trained: bool, rows, report) -> str:
    head = ("<tr><th>decoder</th><th>output</th><th>forwards / image</th><th>step compression</th>"
            "<th>wall-clock speed-up</th><th>tokens / forward</th><th>quality</th></tr>")  # fmt: skip
    body = []
    for label, r, _ in rows:
        q = ", ".join(f"{k} {v:.3f}" for k, v in r["quality"].items()) or "–"
        drafter = r.get("forwards_per_image_by_model", {}).get("drafter")
        nfe = f"{r['mean_nfe_per_image']:.1f}" + ("" if drafter is None else f" (+{drafter:.1f} drafter)")
        body.append(
            f"<tr><td>{html.escape(label)}</td><td>{EXPECTATION_TEXT[r['expectation']]}</td>"
            f"<td>{nfe}</td>"
            f"<td>{r['step_compression']:.2f}x</td><td>{r['wall_speedup']:.2f}x</td>"
            f"<td>{r['mean_accepted_per_forward']:.2f}</td><td>{html.escape(q)}</td></tr>"
        )
    grids = "".join(f"<h4>{html.escape(label)} (<a href='{g}'>grid</a>)</h4>"
                    + (GREEDY_NOTE if r["expectation"] == "greedy_equals_ar" else "") + r["gallery"]
                    for label, r, g in rows)  # fmt: skip
    hists = {label: {int(k): v for k, v in r["accepted_histogram"].items()} for label, r, _ in rows}
    status = "trained" if trained else "<b>UNTRAINED (random weights)</b>"
    return (f"<h2>{html.escape(name)} — {status}</h2><p>{report['num_images']} images, batch "
            f"{report['batch_size']}, seed {report['seed']}, {report['num_tokens']} tokens per image.</p>"
            f"<table>{head}{''.join(body)}</table><h3>Tokens accepted per forward</h3>{histogram_svg(hists)}"
            f"<h3>Images</h3>{grids}")  # fmt: skip


def _page_html(sections: list[str], untrained: bool) -> str:
    warn = (
        "<p class='warn'>No shipped trained model was found; this report uses random weights.</p>" if untrained else ""
    )
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px}figure{display:inline-block;margin:6px}"
             ".warn{color:#b00}.gallery{display:flex;flex-wrap:wrap}figure.cap{width:140px;margin:4px}"
             "figure.cap figcaption{font-size:11px}")  # fmt: skip
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>decodelab demo</title><style>{style}</style>"
        f"</head><body><h1>decodelab demo</h1>{warn}{''.join(sections)}</body></html>\n"
    )
