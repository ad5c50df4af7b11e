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

# The models at the 8 GB wall, predicted: the largest batch (accumulation 1) and the main job
# (batch 2 x 64) per precision, gradient checkpointing off and on: the paper's 256 px model,
# the CIFAR-10 model, lucidrains' default Unet at 128 px (no checkpointing: it has none), and
# diffusers' UNet2DModel in google/ddpm-celebahq-256's layout.
python -m bench.memory --predict-only --find-max-batch --accum 1 --precision fp32,bf16,fp16 --checkpointing off,on --preset ddpm-256 --out results
python -m bench.memory --predict-only --batch 2 --accum 64 --precision fp32,bf16,fp16 --checkpointing off,on --preset ddpm-256 --out results
python -m bench.memory --predict-only --find-max-batch --accum 1 --precision fp32,bf16,fp16 --checkpointing off,on --out results
python -m bench.memory --predict-only --batch 2 --accum 64 --precision fp32,bf16,fp16 --checkpointing off,on --out results
python -m bench.memory --predict-only --find-max-batch --accum 1 --precision fp32,bf16,fp16 --impl lucidrains --image-size 128 --out results
python -m bench.memory --predict-only --batch 2 --accum 64 --precision fp32,bf16,fp16 --impl lucidrains --image-size 128 --out results
python -m bench.memory --predict-only --find-max-batch --accum 1 --precision fp32,bf16,fp16 --checkpointing off,on --impl diffusers --preset ddpm-256 --out results
python -m bench.memory --predict-only --batch 2 --accum 64 --precision fp32,bf16,fp16 --checkpointing off,on --impl diffusers --preset ddpm-256 --out results
# Against public reports: improved-diffusion issue 3 (256 px, V100 16 GB: 4 per card fit, 8 do
# not) and denoising-diffusion-pytorch issue 181 (128 px, batch 14, "about 11G").
python -m bench.memory --predict-only --preset ddpm-256 --card v100-16gb --batch 4,8 --accum 1 --out results
python -m bench.memory --predict-only --impl lucidrains --image-size 128 --batch 14 --accum 1 --out results
# The 256 px model on every card of the catalogue: the main job, and the largest batch in fp32.
python -m bench.memory --predict-only --preset ddpm-256 --batch 2 --accum 64 --precision fp32,bf16 --card gtx1070,gtx1080,rtx2070,rtx2080,rtx2080ti,rtx3060,rtx3060ti,rtx3070,rtx3080,rtx3080ti,rtx3090,rtx4060,rtx4060ti,rtx4070,rtx4090,t4,v100-16gb,v100-32gb,a100-40gb --out results
python -m bench.memory --predict-only --preset ddpm-256 --find-max-batch --accum 1 --precision fp32 --card gtx1070,gtx1080,rtx2070,rtx2080,rtx2080ti,rtx3060,rtx3060ti,rtx3070,rtx3080,rtx3080ti,rtx3090,rtx4060,rtx4060ti,rtx4070,rtx4090,t4,v100-16gb,v100-32gb,a100-40gb --out results
python -m bench.memory --predict-only --preset ddpm-256 --find-max-batch --accum 1 --precision bf16 --card gtx1070,gtx1080,rtx2070,rtx2080,rtx2080ti,rtx3060,rtx3060ti,rtx3070,rtx3080,rtx3080ti,rtx3090,rtx4060,rtx4060ti,rtx4070,rtx4090,t4,v100-16gb,v100-32gb,a100-40gb --out results
# The memory levers at 256 px (docs/levers.md) on an 8 GB and a 12 GB card: each alone in fp32
# (the baselines are the two lines above), math attention for its cost, and all together in bf16.
python -m bench.memory --predict-only --preset ddpm-256 --find-max-batch --accum 1 --card rtx3070,rtx3060 --out results --precision fp32 --checkpointing on
python -m bench.memory --predict-only --preset ddpm-256 --find-max-batch --accum 1 --card rtx3070,rtx3060 --out results --precision fp32 --optimizer adamw8bit
python -m bench.memory --predict-only --preset ddpm-256 --find-max-batch --accum 1 --card rtx3070,rtx3060 --out results --precision fp32 --ema cpu
python -m bench.memory --predict-only --preset ddpm-256 --find-max-batch --accum 1 --card rtx3070,rtx3060 --out results --precision fp32 --attention-backend math
python -m bench.memory --predict-only --preset ddpm-256 --find-max-batch --accum 1 --card rtx3070,rtx3060 --out results --precision bf16 --checkpointing on --optimizer adamw8bit --ema cpu

# Time on a card, predicted (docs/throughput.md): the step-time model fitted to the public runs
# (results/public_runs.md, with the ADM paper's five V100 rows of Table 7 predicted through
# --impl guided-diffusion and held out of the fit; it rewrites bench/predict/time_constants.json,
# which every prediction below reads: the same file when the code is unchanged; --measure-host
# would measure the host's dispatch cost on this machine first), the harness's rows for the
# public runs' cards, the CIFAR-10 model's training step on every card, and sampling on two 8 GB
# cards and on the RTX 2080 Ti of a published sampling time (docs/sampling.md).
python -m bench.predict.calibrate --out results
python -m bench.throughput --predict-only --card v100-32gb --batch 128 --precision fp32 --train-steps 400000 --out results
python -m bench.throughput --predict-only --card rtx4090 --batch 128 --precision fp32 --train-steps 400000 --out results
python -m bench.throughput --predict-only --card rtx3080ti --batch 128 --precision fp32,fp16 --train-steps 196000 --out results
python -m bench.throughput --predict-only --card v100-32gb --batch 64 --precision fp32 --train-steps 390625 --out results
python -m bench.throughput --predict-only --card gtx1070,gtx1080,rtx2070,rtx2080,rtx2080ti,rtx3060,rtx3060ti,rtx3070,rtx3080,rtx3080ti,rtx3090,rtx4060,rtx4060ti,rtx4070,rtx4090,t4,v100-16gb,v100-32gb,a100-40gb --batch 128 --precision fp32,bf16 --out results
python -m bench.sampling --predict-only --card rtx3070,rtx4060 --sampler ddpm,ddim --sampling-steps 50 --batch 64 --out results
python -m bench.sampling --predict-only --card rtx2080ti --sampler ddpm --batch 128 --precision fp32 --out results
# The memory of torchcfm's V100 run of the same public thread (15,424 MiB on nvidia-smi).
python -m bench.memory --predict-only --card v100-32gb --heads 4 --batch 128 --accum 1 --precision fp32 --out results

# openai's guided-diffusion models trained as its own code trains them (--impl guided-diffusion,
# docs/impl.md), predicted. Against public reports first: improved-diffusion issue 3 with its
# own flags (fp32, V100 16 GB: 4 fit, 8 do not), and the ADM paper's 128 px model at the batch
# per V100 of its unfused code (4) and of its fused code (32), in its fp16 scheme.
python -m bench.memory --predict-only --impl guided-diffusion --model-config iddpm-lsun-bedroom --precision fp32 --card v100-16gb --batch 4,8 --accum 1 --out results
python -m bench.memory --predict-only --impl guided-diffusion --find-max-batch --model-config iddpm-lsun-bedroom --precision fp32 --card v100-16gb --accum 1 --out results
python -m bench.memory --predict-only --impl guided-diffusion --model-config adm-imagenet-128 --precision fp16 --card v100-16gb,v100-32gb --batch 4,32 --accum 1 --out results
python -m bench.memory --predict-only --impl guided-diffusion --find-max-batch --model-config adm-imagenet-128 --precision fp16 --card v100-16gb --accum 1 --out results
# Fine-tuning the 256 px unconditional model at batch 1 on a 16 GB T4 and V100 and a 24 GB
# card, fp32 and its fp16 scheme, checkpointing off and on.
python -m bench.memory --predict-only --impl guided-diffusion --model-config adm-imagenet-256-uncond --precision fp32,fp16 --checkpointing off,on --batch 1 --accum 1 --card t4,v100-16gb,rtx4090 --out results

# The largest batch per card of the 64 px and the 256 px unconditional models, fp32 and its fp16
# scheme, checkpointing off and on, on an 8, a 12, a 16 and a 24 GB card, then on a T4 and an
# A100 40 GB (their own compute capabilities, so their own traces).
python -m bench.memory --predict-only --impl guided-diffusion --find-max-batch --accum 1 --model-config adm-imagenet-64 --precision fp32,fp16 --checkpointing off,on --card rtx3070,rtx3060,v100-16gb,rtx4090 --out results
python -m bench.memory --predict-only --impl guided-diffusion --find-max-batch --accum 1 --model-config adm-imagenet-256-uncond --precision fp32,fp16 --checkpointing off,on --card rtx3070,rtx3060,v100-16gb,rtx4090 --out results
python -m bench.memory --predict-only --impl guided-diffusion --find-max-batch --accum 1 --model-config adm-imagenet-64 --precision fp32,fp16 --checkpointing off,on --card t4,a100-40gb --out results
python -m bench.memory --predict-only --impl guided-diffusion --find-max-batch --accum 1 --model-config adm-imagenet-256-uncond --precision fp32,fp16 --checkpointing off,on --card t4,a100-40gb --out results
# The largest sampling batch (DDIM 50, fp32) on an 8 GB and a 12 GB card, predicted: the pass
# alone, then the one ddpm.cli.train runs after its last step next to its training state
# (training batch 32, its default, for the CIFAR-10 model; 2, the largest that trains on an
# 8 GB card, for the 256 px model).
python -m bench.sampling --predict-only --find-max-batch --preset ddpm-cifar10 --sampler ddim --sampling-steps 50 --card rtx3070,rtx3060 --out results
python -m bench.sampling --predict-only --find-max-batch --preset ddpm-cifar10 --sampler ddim --sampling-steps 50 --train-batch 32 --card rtx3070,rtx3060 --out results
python -m bench.sampling --predict-only --find-max-batch --preset ddpm-256 --sampler ddim --sampling-steps 50 --card rtx3070,rtx3060 --out results
python -m bench.sampling --predict-only --find-max-batch --preset ddpm-256 --sampler ddim --sampling-steps 50 --train-batch 2 --card rtx3070,rtx3060 --out results

# What each memory lever costs at 256 px (docs/levers.md), predicted: the step at each largest
# batch found above on the RTX 3070 and 3060 (alone and all together), each optimizer and EMA
# setting at one batch on the RTX 3070, then the two joined into levers.md and plots/levers.png.
python -m bench.throughput --predict-only --preset ddpm-256 --accum 1 --out results --card rtx3070 --batch 2 --precision fp32
python -m bench.throughput --predict-only --preset ddpm-256 --accum 1 --out results --card rtx3060 --batch 4 --precision fp32
python -m bench.throughput --predict-only --preset ddpm-256 --accum 1 --out results --card rtx3070 --batch 2 --precision bf16
python -m bench.throughput --predict-only --preset ddpm-256 --accum 1 --out results --card rtx3060 --batch 4 --precision bf16
python -m bench.throughput --predict-only --preset ddpm-256 --accum 1 --out results --card rtx3070 --batch 6 --precision fp32 --checkpointing on
python -m bench.throughput --predict-only --preset ddpm-256 --accum 1 --out results --card rtx3060 --batch 10 --precision fp32 --checkpointing on
python -m bench.throughput --predict-only --preset ddpm-256 --accum 1 --out results --card rtx3070 --batch 3 --precision fp32 --optimizer adamw8bit
python -m bench.throughput --predict-only --preset ddpm-256 --accum 1 --out results --card rtx3060 --batch 4 --precision fp32 --optimizer adamw8bit
python -m bench.throughput --predict-only --preset ddpm-256 --accum 1 --out results --card rtx3070 --batch 2 --precision fp32 --ema cpu
python -m bench.throughput --predict-only --preset ddpm-256 --accum 1 --out results --card rtx3060 --batch 4 --precision fp32 --ema cpu
python -m bench.throughput --predict-only --preset ddpm-256 --accum 1 --out results --card rtx3070 --batch 2 --precision fp32 --attention-backend math
python -m bench.throughput --predict-only --preset ddpm-256 --accum 1 --out results --card rtx3060 --batch 4 --precision fp32 --attention-backend math
python -m bench.throughput --predict-only --preset ddpm-256 --accum 1 --out results --card rtx3070 --batch 9 --precision bf16 --checkpointing on --optimizer adamw8bit --ema cpu
python -m bench.throughput --predict-only --preset ddpm-256 --accum 1 --out results --card rtx3060 --batch 16 --precision bf16 --checkpointing on --optimizer adamw8bit --ema cpu
python -m bench.throughput --predict-only --preset ddpm-256 --accum 1 --out results --card rtx3070 --batch 2 --precision fp32 --optimizer adamw8bit,ao-adamw8bit,ao-adamw4bit,adafactor,sgd,lion,prodigy
python -m bench.throughput --predict-only --preset ddpm-256 --accum 1 --out results --card rtx3070 --batch 2 --precision fp32 --ema off
python -m bench.throughput --predict-only --preset ddpm-256 --accum 1 --out results --card rtx3070 --batch 2 --precision fp32 --ema device,cpu --ema-dtype bf16
python -m bench.lever_costs --out results --preset ddpm-256

# guided-diffusion's 256 px model with issue 31's memory levers in its TrainLoop's step, on an
# 8 and a 12 GB card: all together first (fp32 and its fp16 scheme), each alone, in pairs, and
# batch 1's figures without checkpointing. Run from a clean tree at 74719f1 into a scratch
# folder, then its rows appended.
python -m bench.memory --predict-only --impl guided-diffusion --find-max-batch --accum 1 --model-config adm-imagenet-256-uncond --card rtx3070,rtx3060 --precision fp32,fp16 --checkpointing on --optimizer adamw8bit --ema cpu --out results
python -m bench.memory --predict-only --impl guided-diffusion --find-max-batch --accum 1 --model-config adm-imagenet-256-uncond --card rtx3070,rtx3060 --precision fp32 --checkpointing off --optimizer adamw8bit --out results
python -m bench.memory --predict-only --impl guided-diffusion --find-max-batch --accum 1 --model-config adm-imagenet-256-uncond --card rtx3070,rtx3060 --precision fp32 --checkpointing off --ema cpu --out results
python -m bench.memory --predict-only --impl guided-diffusion --find-max-batch --accum 1 --model-config adm-imagenet-256-uncond --card rtx3070,rtx3060 --precision fp32 --checkpointing off --ema off --out results
python -m bench.memory --predict-only --impl guided-diffusion --find-max-batch --accum 1 --model-config adm-imagenet-256-uncond --card rtx3070,rtx3060 --precision fp32,fp16 --checkpointing on --optimizer adamw8bit --ema off --out results
python -m bench.memory --predict-only --impl guided-diffusion --find-max-batch --accum 1 --model-config adm-imagenet-256-uncond --card rtx3070,rtx3060 --precision fp32 --checkpointing off --ema-dtype bf16 --out results
python -m bench.memory --predict-only --impl guided-diffusion --find-max-batch --accum 1 --model-config adm-imagenet-256-uncond --card rtx3070,rtx3060 --precision fp32 --checkpointing on --ema cpu --out results
python -m bench.memory --predict-only --impl guided-diffusion --find-max-batch --accum 1 --model-config adm-imagenet-256-uncond --card rtx3070,rtx3060 --precision fp32 --checkpointing on --optimizer adamw8bit --out results
python -m bench.memory --predict-only --impl guided-diffusion --find-max-batch --accum 1 --model-config adm-imagenet-256-uncond --card rtx3070,rtx3060 --precision fp32 --checkpointing off --optimizer adamw8bit --ema cpu --out results
python -m bench.memory --predict-only --impl guided-diffusion --accum 1 --model-config adm-imagenet-256-uncond --card rtx3070,rtx3060 --batch 1 --precision fp32 --checkpointing off --optimizer adamw,adamw8bit --ema device,cpu,off --out results

# Plots from the CSVs (the .md files are already current).
python -m bench.report --out results
# guided-diffusion's 256 px model with the levers that fit it (checkpointing, 8-bit AdamW, its EMA
# on the CPU) at its largest batch on the RTX 3070 and 3060: the step predicted.
python -m bench.throughput --impl guided-diffusion --model-config adm-imagenet-256-uncond --accum 1 --precision fp32 --checkpointing on --optimizer adamw8bit --ema cpu --predict-only --out results --card rtx3070 --batch 1
python -m bench.throughput --impl guided-diffusion --model-config adm-imagenet-256-uncond --accum 1 --precision fp32 --checkpointing on --optimizer adamw8bit --ema cpu --predict-only --out results --card rtx3060 --batch 3
# 8-bit AdamW (bitsandbytes) against AdamW over 200 steps on digits, with and without accumulation.
python -m bench.loss --optimizer adamw,adamw8bit --precision fp32 --out results
# The plans: the fastest way to train each model at its effective batch on an RTX 3060 12 GB, an
# RTX 3070, an RTX 4090 and a T4 (predicted). Each was run from a clean tree into a scratch
# folder and its rows appended (CIFAR-10 at c2ebc05, ddpm-256 at 83a08d0, guided-diffusion at
# 750ead9; plan.md rebuilt by bench.planning.report at the commit that adds them). The
# guided-diffusion plan was traced one compute capability at a time (--card rtx4090, --card t4,
# --card rtx3060,rtx3070; 38 to 56 minutes each, three at once) into one trace cache, then asked for
# the four cards at once, answered from that cache.
python -m bench.plan --card rtx3060,rtx3070,rtx4090,t4 --effective-batch 128 --out results
python -m bench.plan --preset ddpm-256 --card rtx3060,rtx3070,rtx4090,t4 --effective-batch 64 --out results
python -m bench.plan --impl guided-diffusion --model-config adm-imagenet-256-uncond --card rtx3060,rtx3070,rtx4090,t4 --effective-batch 256 --levers split,precision=fp32+fp16,checkpointing,optimizer=adamw+adamw8bit,ema --out results
