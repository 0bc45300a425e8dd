#!/usr/bin/env bash
# Certify the MNIST study's models again with alpha-CROWN (and branch and bound on two of them).
# The committed records hold no weights: each model is retrained from its record's overrides (attacks cut
# to FGSM on 100 images: training does not depend on them), its clean accuracy and final losses compared
# with the record (retrain.json), then `isorobust certify` writes <record>/certify_<method>/, where the
# study report picks up every method. `isorobust certify` attacks the certified images first (apgd at the
# certified radii): certified.csv's attack_upper_bound, the upper bound on the same images.
#   bash docs/results/mnist_runs/recertify.sh            (WORK=outputs/recertify holds the retrained runs)
set -euo pipefail
cd "$(dirname "$0")/../../.."
ISO=${ISO:-.venv/bin/isorobust}
PY=${PY:-.venv/bin/python}
WORK=${WORK:-outputs/recertify}
N=${N:-1000}                     # first N test images
EPS=${EPS:-[0.003,0.01]}         # alpha-CROWN radii
BAB_N=${BAB_N:-200}              # branch and bound: first BAB_N images, eps 0.01, the paper models below
BAB_JOBS=${BAB_JOBS:-"0 9"}      # beta = 0 and beta = 1, seed 0
BAB_TIMEOUT=${BAB_TIMEOUT:-10}
SKIP=${SKIP:-}                   # jobs left out (a cut, said in the records' README)
for sweep in paper_mnist baselines_mnist; do
  rec=docs/results/mnist_runs/$sweep/uncut
  for job in $(ls "$rec" | grep -E '^[0-9]+$' | sort -n); do
    case " $SKIP " in *" $job "*) continue ;; esac
    run=$WORK/$sweep/$job
    mkdir -p "$(dirname "$run")"
    if [ ! -f "$run/metrics.json" ]; then
      overrides=$($PY -c "import sys, yaml; print(' '.join(o for o in yaml.safe_load(open(sys.argv[1])) if not o.startswith('resume=')))" "$rec/$job/.hydra/overrides.yaml")
      # shellcheck disable=SC2086
      $ISO train $overrides threads=1 attack=fgsm attack.apgd=null attack.autoattack=null eval.n_samples=100 \
        check.enabled=false hydra.run.dir="$run" > "$run.log" 2>&1
    fi
    $PY - "$rec/$job/metrics.json" "$run/metrics.json" "$rec/$job/retrain.json" <<'PYEOF'
import json, sys
old, new = (json.load(open(p)) for p in sys.argv[1:3])
keys = ["clean_accuracy", "train_cross_entropy", "train_isometric_loss", "test_cross_entropy"]
rows = {k: {"record": old.get(k), "retrained": new.get(k)} for k in keys}
for k, v in rows.items():
    a, b = v["record"], v["retrained"]
    v["equal"] = a == b
    v["relative_difference"] = None if a in (None, 0) or b is None else abs(a - b) / abs(a)
json.dump({"compared": rows, "exact": all(v["equal"] for v in rows.values())}, open(sys.argv[3], "w"), indent=2)
PYEOF
    if [ ! -f "$rec/$job/certify_alpha_crown/certified.csv" ]; then
      $ISO certify run="$run" certify=alpha_crown certify.n_samples="$N" certify.epsilons="$EPS" \
        hydra.run.dir="$rec/$job/certify_alpha_crown"
    fi
  done
  [ "$sweep" = paper_mnist ] || continue  # branch and bound: the paper models only
  for job in $BAB_JOBS; do
    if [ ! -f "$rec/$job/certify_bab/certified.csv" ]; then
      $ISO certify run="$WORK/$sweep/$job" certify=bab certify.n_samples="$BAB_N" certify.epsilons=[0.01] \
        certify.bab.timeout="$BAB_TIMEOUT" hydra.run.dir="$rec/$job/certify_bab"
    fi
  done
done
