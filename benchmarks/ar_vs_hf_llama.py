"""Per-token latency of decodelab's ``ar`` decoder vs Hugging Face ``LlamaForCausalLM``.

Both models have the same width, depth, heads, SwiGLU size and vocabulary, random weights, batch 1,
and generate the same number of tokens with their KV caches (HF: ``generate(use_cache=True)``
with sampling; decodelab: the ``ar`` decoder on a class-conditional GPT). Timings are interleaved
and the median of ``--repeats`` runs is reported, with the ratio decodelab / HF (lower is better).

    python benchmarks/ar_vs_hf_llama.py --dim 256 --layers 8 --heads 8 --tokens 256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=256, help="a square number (image tokens)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import LlamaConfig, LlamaForCausalLM

    import decodelab
    from decodelab.speculative import SamplingConfig, create_decoder

    torch.manual_seed(0)
    gpt = decodelab.create_model(
        "test_gpt", dim=args.dim, n_layer=args.layers, n_head=args.heads, vocab_size=args.vocab,
        block_size=args.tokens, multiple_of=64, num_classes=10,
    ).eval()  # fmt: skip
    hidden = gpt.layers[0].feed_forward.w1.out_features
    hf = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=args.vocab, hidden_size=args.dim, intermediate_size=hidden, num_hidden_layers=args.layers,
            num_attention_heads=args.heads, num_key_value_heads=args.heads, max_position_embeddings=args.tokens + 8,
            rms_norm_eps=1e-5, tie_word_embeddings=False,
        )
    ).eval()  # fmt: skip
    ar = create_decoder("ar")
    sampling = SamplingConfig(temperature=1.0)
    cond = torch.tensor([1])
    prompt = torch.tensor([[1]])

    def run_ours() -> float:
        out = ar(gpt, cond, sampling=sampling, generator=torch.Generator().manual_seed(0))
        return out.wall_time

    def run_hf() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            hf.generate(prompt, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=True, top_k=0,
                        use_cache=True, pad_token_id=0)  # fmt: skip
        return time.perf_counter() - t0

    run_ours(), run_hf()  # warm-up
    ours, theirs = [], []
    for _ in range(args.repeats):
        ours.append(run_ours())
        theirs.append(run_hf())
    mo, mh = statistics.median(ours), statistics.median(theirs)
    report = {
        "config": vars(args),
        "params_decodelab": sum(p.numel() for p in gpt.parameters()),
        "params_hf": sum(p.numel() for p in hf.parameters()),
        "decodelab_ar_ms_per_token": 1000 * mo / args.tokens,
        "hf_llama_ms_per_token": 1000 * mh / args.tokens,
        "ratio_decodelab_over_hf": mo / mh,
        "runs_s": {"decodelab": ours, "hf": theirs},
        "torch_threads": torch.get_num_threads(),
    }
    print(f"decodelab ar: {report['decodelab_ar_ms_per_token']:.2f} ms/token   "
          f"HF LlamaForCausalLM: {report['hf_llama_ms_per_token']:.2f} ms/token   "
          f"ratio {report['ratio_decodelab_over_hf']:.2f} (median of {args.repeats})")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
