"""Speed-quality plot of a ``decodelab bench decode`` run (MuLo-SD): one panel per bench JSON.

Each decoder of a bench report is a point: x = wall-clock speed-up vs ``ar`` (``--x steps``: step
compression, target forwards of ``ar`` / the decoder's), y = a quality metric read from the
evaluation JSONs of the same decoders (``decodelab eval shapes|fmnist`` ``results.json``, or
``decodelab eval geneval``'s ``geneval.json``). An evaluation is matched to a bench decoder by
decoder name, decoder settings and drafter / up-sampler (as both JSONs record them), or explicitly
with ``PATH::LABEL`` (LABEL as in the bench report, e.g. ``mulo:tau=0.05:k=16``). Without any
evaluation for a panel, y is the wall-clock speed-up and x the target forwards per image.

    python benchmarks/plot_speed_quality.py runs/bench/shapes.json runs/bench/fmnist.json \\
        --quality runs/eval/shapes-*/results.json runs/eval/fmnist-*/results.json --out speed_quality.png

Drafter decoders are drawn as triangles and annotated with their drafter forwards per image.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: preferred quality metrics, first found wins (names as decodelab's evaluation JSONs write them)
PREFERRED = ("geneval_overall (shapes detector)", "geneval_overall", "fid (fmnist features)",
             "class_accuracy (fmnist classifier)")  # fmt: skip
LOWER_IS_BETTER = ("fid", "kid")


def _key(decoder: str, settings: dict, components: dict) -> str:
    return json.dumps([decoder, settings, {k: components.get(k) for k in ("drafter", "upsampler")}], sort_keys=True)


def read_quality(path: Path) -> tuple[str, dict[str, float]]:
    """An evaluation JSON -> (match key, metrics)."""
    doc = json.loads(path.read_text())
    gen = doc.get("generation") or doc.get("sampling_run") or {}
    s = gen.get("settings") or {}
    if "decoder" not in s:
        raise ValueError(f"{path} records no generation settings (decoder, decoder_kwargs): not a decodelab "
                         "evaluation of generated samples")  # fmt: skip
    metrics = dict(doc.get("metrics") or {})
    if "scores" in doc:  # eval geneval
        metrics["geneval_overall"] = doc["scores"]["overall"]
    metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return _key(s["decoder"], s.get("decoder_kwargs") or {}, s), metrics


def bench_points(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """label -> the bench numbers of one decoder and its match key."""
    out = {}
    for label, r in report["decoders"].items():
        out[label] = {
            "key": _key(r["decoder"], r.get("settings") or {}, r.get("components") or {}),
            "wall_speedup": float(r["wall_speedup"]),
            "step_compression": float(r["step_compression"]),
            "nfe": float(r["mean_nfe_per_image"]),
            "drafter": (r.get("forwards_per_image_by_model") or {}).get("drafter"),
        }
    return out


def pick_metric(available: set[str], wanted: str | None) -> str:
    if wanted:
        if wanted not in available:
            raise ValueError(f"metric {wanted!r} is not in the evaluation JSONs; they have {sorted(available)}")
        return wanted
    for m in PREFERRED:
        if m in available:
            return m
    if not available:
        raise ValueError("the evaluation JSONs hold no numeric metrics")
    return sorted(available)[0]


def _common_options(labels: list[str]) -> dict[str, set[str]]:
    """Per decoder name, the ``key=value`` options every one of its (two or more) labels carries (said once)."""
    by_name: dict[str, list[set[str]]] = {}
    for label in labels:
        name, *opts = label.split(":")
        by_name.setdefault(name, []).append(set(opts))
    return {n: set.intersection(*sets) for n, sets in by_name.items() if len(sets) > 1}


def plot(benches: list[Path], qualities: list[str], out: Path, metric: str | None = None, x: str = "wall") -> dict:
    """Draw the figure into ``out``; returns what was plotted per panel (for records and tests)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_key: dict[str, dict[str, float]] = {}
    by_label: list[tuple[str, str | None, dict[str, float]]] = []
    for q in qualities:
        path, _, label = q.partition("::")
        key, metrics = read_quality(Path(path))
        if label:  # an explicit label applies to the panels of the model the evaluation sampled from
            by_label.append((label, json.loads(Path(path).read_text()).get("model"), metrics))
        else:
            by_key[key] = metrics
    panels = []
    fig, axes = plt.subplots(1, len(benches), figsize=(5.5 * len(benches), 4.5), squeeze=False)
    for ax, bench in zip(axes[0], benches):
        report = json.loads(Path(bench).read_text())
        points = bench_points(report)
        quality = {label: by_key[p["key"]] for label, p in points.items() if p["key"] in by_key}
        quality.update({label: m for label, model, m in by_label
                        if label in points and (model is None or report.get("model") in (None, model))})  # fmt: skip
        xs_name = "wall-clock speed-up vs ar" if x == "wall" else "step compression (target forwards, ar / x)"
        rows = []
        if quality:
            name = pick_metric(set.intersection(*(set(m) for m in quality.values())), metric)
            for label, m in quality.items():
                p = points[label]
                rows.append((label, p["wall_speedup"] if x == "wall" else p["step_compression"], m[name], p))
            y_name = name + (" (lower is better)" if any(t in name for t in LOWER_IS_BETTER) else "")
        else:
            name = None
            rows = [(label, p["nfe"], p["wall_speedup"], p) for label, p in points.items()]
            xs_name, y_name = "target forwards per image", "wall-clock speed-up vs ar"
        common = _common_options([r[0] for r in rows])
        for label, xv, yv, p in rows:
            drafted = p["drafter"] is not None
            ax.scatter([xv], [yv], marker="^" if drafted else "o", s=45, color="C1" if drafted else "C0")
            short = ":".join(o for o in label.split(":") if o not in common.get(label.split(":")[0], ()))
            text = short + (f"\n(+{p['drafter']:.0f} drafter fwd/img)" if drafted else "")
            ax.annotate(text, (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=7)
        title = str(report.get("model") or ", ".join(report.get("pairs") or []) or Path(bench).stem)
        threads = report.get("threads")
        shared = "; ".join(f"{n}: {':'.join(sorted(o))}" for n, o in common.items() if o)
        ax.set_title(f"{title} ({report['num_images']} images, batch {report['batch_size']}"
                     + (f", {threads} threads)" if threads else ")") + (f"\n{shared}" if shared else ""),
                     fontsize=8)  # fmt: skip
        ax.set_xlabel(xs_name)
        ax.set_ylabel(y_name)
        ax.grid(alpha=0.3)
        panels.append({"bench": str(bench), "metric": name, "points": {r[0]: [r[1], r[2]] for r in rows}})
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return {"out": str(out), "panels": panels}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", nargs="+", help="bench decode --json report(s): one panel each")
    ap.add_argument("--quality", nargs="*", default=[], metavar="PATH[::LABEL]", help="evaluation JSONs")
    ap.add_argument("--metric", default=None, help=f"quality metric (default: the first of {PREFERRED} found)")
    ap.add_argument("--x", choices=("wall", "steps"), default="wall", help="x axis: wall-clock speed-up or steps")
    ap.add_argument("--out", default="speed_quality.png", help="PNG file")
    args = ap.parse_args(argv)
    try:
        res = plot([Path(b) for b in args.bench], args.quality, Path(args.out), args.metric, args.x)
    except (ValueError, OSError, KeyError) as e:
        print(f"plot_speed_quality: error: {e}", file=sys.stderr)
        return 2
    for panel in res["panels"]:
        print(f"{panel['bench']}: {len(panel['points'])} decoders, y = {panel['metric'] or 'wall-clock speed-up'}")
    print(f"wrote {res['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
