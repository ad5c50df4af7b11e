#!/usr/bin/env bash
# Every committed table in results/, in the order they were measured (about 100 minutes on the
# project's 2-core CPU). Run from the repository root, on an idle machine, after installing
# (README.md). Each command appends its rows to results/<harness>.csv and rewrites the .md
# (--out results: without it, rows go to runs/bench/, which git ignores); results/README.md says
# what each one answers.
set -euo pipefail

# Memory: the batch sweep, the largest batch per precision, then the main job.
python -m bench.memory --batch 1,2,4,8,16,32,64 --accum 1 --precision fp32,bf16 --attention none,16 --out results
python -m bench.memory --find-max-batch --accum 1 --precision fp32,bf16 --attention none,16 --out results
python -m bench.memory --batch 2 --accum 64 --out results
# Gradient checkpointing, predicted: the main job and the largest batch.
python -m bench.memory --predict-only --batch 2 --accum 64 --checkpointing on --out results
python -m bench.memory --predict-only --find-max-batch --accum 1 --precision fp32,bf16 --attention 16 --checkpointing on --out results

# Throughput against batch, then ours against diffusers' UNet2DModel (5 alternating repeats).
python -m bench.throughput --batch 1,2,4,8,16,32 --precision fp32,bf16 --steps 3 --out results
python -m bench.throughput --impl ddpm,diffusers --batch 8 --precision fp32,bf16 --steps 3 --repeats 5 --out results

# Loss: accumulation, precision and attention on scikit-learn's digits (no download).
python -m bench.loss --precision fp32,bf16 --attention none,8 --out results

# Sampling: DDPM's 1000 steps against DDIM's 10-250, then ours against diffusers.
python -m bench.sampling --sampler ddpm,ddim --sampling-steps 10,50,100,250 --out results
python -m bench.sampling --impl ddpm,diffusers --sampler ddpm --repeats 5 --out results

# More than one card. The memory of one card of 1, 2, 4 and 8 for the main job and the largest
# batch per card (predicted: no rank is started), then 1 against 2 ranks measured on this CPU,
# where the 2 ranks share its 2 cores.
python -m bench.memory --predict-only --batch 2 --accum 64 --ranks 1,2,4,8 --parallel ddp,fsdp --precision fp32,bf16 --out results
python -m bench.memory --predict-only --find-max-batch --accum 1 --ranks 1,2,4,8 --parallel ddp,fsdp --precision fp32,bf16 --out results
python -m bench.loss --ranks 1,2 --parallel ddp,fsdp --batch 2 --effective-batch 8 --precision fp32 --out results
python -m bench.throughput --ranks 1,2 --parallel ddp,fsdp --batch 8 --precision fp32 --steps 3 --out results

# Plots from the CSVs (the .md files are already current).
python -m bench.report --out results
