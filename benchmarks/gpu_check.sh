#!/usr/bin/env bash
# The GPU path, side by side with the CPU of the same machine: the default run, the full-strength attacks
# and the certified bounds on device=cuda and device=cpu, timed from their own records (metrics.json's
# seconds and attack_cost, certify.json's seconds), written to $OUT/RESULTS_gpu.md by gpu_report.py.
#
#   bash benchmarks/gpu_check.sh prepare   # here: the wheels the GPU machine lacks and MNIST (gzipped) into
#                                          # .gpu/ (git-ignored through .git/info/exclude), about 15 MB
#   bash benchmarks/gpu_check.sh run       # there, through the device tool with carry [".gpu"]; about 6 min
#
# The GPU machine's image has torch, numpy, pandas, scipy, matplotlib, tqdm, pyyaml, but not Hydra, OmegaConf,
# foolbox or torchattacks, and it reaches no registry: those come as wheels. Nothing here runs in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
prepare)
    mkdir -p .gpu/wheels .gpu/data/MNIST/raw
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    python3 -m pip download --quiet --dest .gpu/wheels --no-deps \
        'hydra-core>=1.3,<1.4' 'omegaconf>=2.3,<2.4' 'antlr4-python3-runtime==4.9.3' 'foolbox>=3.3.3,<4' \
        eagerpy GitPython gitdb smmap 'torchattacks>=3.5,<4' 'hydra-joblib-launcher>=1.2,<1.3'
    for f in ../shared/data/MNIST/raw/*-ubyte; do gzip -c "$f" > ".gpu/data/MNIST/raw/$(basename "$f").gz"; done
    du -sh .gpu
    ;;
run)
    python3 -m pip install --quiet --no-index --no-build-isolation --find-links .gpu/wheels --no-deps .gpu/wheels/*
    export PYTHONPATH="$PWD" ISOROBUST_DATA="$PWD/.gpu/data"
    out="${OUT:-/tmp/gpu_out}"; work=/tmp/gpu_work; mkdir -p "$out" "$work"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$work/gpu.txt" || true
    for device in cuda cpu; do
        start=$(date +%s.%N)
        python3 -m isorobust train +reg=isometric device=$device hydra.run.dir="$work/default_$device" > "$work/default_$device.log" 2>&1
        echo "$(date +%s.%N) - $start" | bc > "$work/default_$device.wall"
        python3 -m isorobust attack run="$work/default_$device" device=$device 'attack=[pgd,apgd,autoattack]' \
            'eval.epsilons=[0.05,0.1,0.2,0.3]' attack.autoattack.n_samples=2000 \
            hydra.run.dir="$work/attack_$device" > "$work/attack_$device.log" 2>&1
        for method in crown alpha_crown; do
            python3 -m isorobust certify run="$work/default_$device" device=$device certify=$method \
                certify.n_samples=1000 'certify.epsilons=[0.01]' \
                hydra.run.dir="$work/default_$device/certify_$method" > "$work/certify_${method}_$device.log" 2>&1
        done
    done
    python3 benchmarks/gpu_report.py "$work" "$out/RESULTS_gpu.md"
    cp "$work"/*.log "$out"/ 2>/dev/null || true
    ;;
*)
    echo "usage: bash benchmarks/gpu_check.sh prepare|run" >&2; exit 2 ;;
esac
