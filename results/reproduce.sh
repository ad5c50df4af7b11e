#!/usr/bin/env bash
# Every committed table in results/, in the order they were measured (about 45 minutes on the
# project's 2-core CPU). Run from the repository root, on an idle machine, after installing
# (README.md). Each command appends its rows to results/<harness>.csv and rewrites the .md;
# results/README.md says what each one answers.
set -euo pipefail

# Memory: the batch sweep, the largest batch per precision, then the main job (top of memory.md).
python -m bench.memory --batch 1,2,4,8,16,32,64 --accum 1 --precision fp32,bf16 --attention none,16
python -m bench.memory --find-max-batch --accum 1 --precision fp32,bf16 --attention none,16
python -m bench.memory --batch 2 --accum 64

# Throughput against batch, then ours against diffusers' UNet2DModel (5 alternating repeats).
python -m bench.throughput --batch 1,2,4,8,16,32 --precision fp32,bf16 --steps 3
python -m bench.throughput --impl ddpm,diffusers --batch 8 --precision fp32,bf16 --steps 3 --repeats 5

# Loss: accumulation, precision and attention on scikit-learn's digits (no download).
python -m bench.loss --precision fp32,bf16 --attention none,8

# Sampling: DDPM's 1000 steps against DDIM's 10-250, then ours against diffusers.
python -m bench.sampling --sampler ddpm,ddim --sampling-steps 10,50,100,250
python -m bench.sampling --impl ddpm,diffusers --sampler ddpm --repeats 5

# Plots from the CSVs (the .md files are already current).
python -m bench.report
