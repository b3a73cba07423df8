#!/usr/bin/env bash
# The paper's neuron claims (README "Political neurons") for several localizers, one run folder each
# (quick-preset fine-tune; patching and mean-ablation on 48 eval items per topic with 3 disjoint random
# controls), then InhibitFT over 3 seeds on the localizer whose general set recovers the most CTG beyond
# its controls (the runs train no mitigation; `mitigate` adds InhibitFT to the chosen folder). Sized for a
# GPU (minutes on one H200; resumable: rerun to finish); on a CPU expect hours.
#
#   bash scripts/neuron_claims.sh [OUT]        env: PN (the CLI, default polineurons), DEVICE (cuda),
#                                                   PRESET (quick), MODEL, LOCALIZERS (names below), SEEDS (3),
#                                                   PYTHON (python3)
set -euo pipefail
out=${1:-runs/claims}
mkdir -p "$out"
pn=${PN:-polineurons}
common=(--device "${DEVICE:-cuda}" --preset "${PRESET:-quick}" ${MODEL:+--model "$MODEL"})
patch=(--patch.max-items 48 --patch.random-seeds 3 --patch.specific target)
declare -A localizers=(
  [today]="--localize.contrast finetune --localize.positions question --localize.normalize none --localize.top-k 30 --localize.min-topics None"
  [answers]="--localize.contrast answers --localize.positions answer --localize.normalize none --localize.top-k 5 --localize.min-topics 3"
  [answers-z]="--localize.contrast answers --localize.positions answer --localize.normalize layer_z --localize.top-k 10 --localize.min-topics 3"
  [leaning]="--localize.contrast leaning --localize.positions answer --localize.normalize none --localize.top-k 5 --localize.min-topics 3"
  [attribution]="--localize.contrast attribution --localize.positions answer --localize.normalize none --localize.top-k 5 --localize.min-topics 3 --localize.general-over others"
  [finetune-answer]="--localize.contrast finetune --localize.positions answer --localize.normalize base_std --localize.top-k 5 --localize.min-topics 3"
)
names=(${LOCALIZERS:-today answers answers-z leaning attribution finetune-answer})
for name in "${names[@]}"; do
  start=$SECONDS
  # shellcheck disable=SC2086  # the localizer's options are words
  $pn run --out "$out/$name" "${common[@]}" "${patch[@]}" ${localizers[$name]} --mitigate.methods > "$out/$name.log" 2>&1 \
    || { echo "$name failed:"; tail -5 "$out/$name.log"; continue; }
  echo "$name: $((SECONDS - start)) s"
done
best=$(${PYTHON:-python3} - "$out" "${names[@]}" <<'PY'
import sys
from polineurons.artifacts import collect_results, load_run

def margin(name):  # the general set's CTG recovery minus its controls' mean (-inf without controls)
    try:
        ctg = collect_results(load_run(f"{sys.argv[1]}/{name}")).get("patching_recovery_on_ctg") or {}
    except Exception:
        return float("-inf")
    return ctg["general"] - ctg["random_mean"] if ctg.get("random_mean") is not None else float("-inf")

print(max(sys.argv[2:], key=margin))
PY
)
echo "InhibitFT on: $best"
start=$SECONDS
# shellcheck disable=SC2086
$pn mitigate --out "$out/$best" "${common[@]}" "${patch[@]}" ${localizers[$best]} --seeds "${SEEDS:-3}" \
  --mitigate.methods inhibit-zero inhibit-freeze stopgrad --mitigate.strengths 0.25 1.0 > "$out/mitigate.log" 2>&1 \
  || { echo "mitigate failed:"; tail -5 "$out/mitigate.log"; }
echo "mitigate: $((SECONDS - start)) s"
$pn report "$out/$best" > /dev/null
