#!/bin/bash
# The README's MuLo-SD speed-quality plot: the two bench runs and the evaluation JSONs in
# benchmarks/results/mulo-eval/ (one per decoder and world), matched by explicit labels.
set -euo pipefail
cd "$(dirname "$0")/.."
R=benchmarks/results/mulo-eval
M="k=16:drafter_decoder=sjd_coupled:refresh=False"
Q=()
for w in shapes fmnist; do
  Q+=("$R/$w-ar.json::ar" "$R/$w-sjd.json::sjd" "$R/$w-sjd_coupled.json::sjd_coupled" "$R/$w-sjd_relax16.json::sjd:relax_k=16")
  for t in 0.02 0.1 0.3; do Q+=("$R/$w-mulo-tau$t.json::mulo:tau=$t:$M"); done
done
Q+=("$R/shapes-mulo-tau0.1-noislands.json::mulo:tau=0.1:$M:islands=False")
python benchmarks/plot_speed_quality.py benchmarks/results/mulo-shapes-t2i-b1.json \
    benchmarks/results/mulo-fmnist-c2i-b1.json --quality "${Q[@]}" --out benchmarks/results/mulo-speed-quality.png
