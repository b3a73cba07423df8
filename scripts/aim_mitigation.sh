#!/usr/bin/env bash
# Issue 21's measurements: which mitigation, aimed how, cuts the most spill-over at 90% of the target
# kept. One study folder per way of making directions (a folder holds one setting per method):
#   1. the layer search for CAFT (leaning directions, every layer, one seed);
#   2. frontiers over SEEDS seeds, each method at its own default strengths plus stronger ones: CAFT with
#      the leaning direction at the default layers and at the searched ones, with flip directions
#      (rank 1: caft-flip, beside the leaning's in one folder and chart; rank 2, 4; read from the answers
#      only, rank 1, 2) and PCA directions (rank 1, 2, 4); caft-grad, steer, kl, replay, caft+kl, caft+steer;
#      the geometry of the flip change (polineurons geometry, every token and answers only);
#   3. the best reading at 90% kept (method and folder) again on a second target and on the left leaning,
#      at its strength there, halved and doubled.
# Sized for a GPU (each quick-preset trial takes seconds on one H200; about 300 trials); resumable: rerun
# to finish what a cut-off run left. On a CPU expect days.
#
#   bash scripts/aim_mitigation.sh [OUT]    env: PN (the CLI, default polineurons), DEVICE (cuda), PRESET
#                                                (quick), MODEL, SEEDS (3), SECOND (race), PYTHON (python3)
set -euo pipefail
out=${1:-runs/aim}
mkdir -p "$out"
pn=${PN:-polineurons}
py=${PYTHON:-python3}
common=(--device "${DEVICE:-cuda}" --preset "${PRESET:-quick}" ${MODEL:+--model "$MODEL"})
seeds=(--seeds "${SEEDS:-3}")
caft=(--mitigate.methods caft --mitigate.strengths 0.05 0.1 0.15 0.25 0.5 1)

step() {  # a name, then the command's arguments; its log in OUT/NAME.log, its time on stdout
  local name=$1 start=$SECONDS
  shift
  "$@" > "$out/$name.log" 2>&1 || { echo "$name failed:"; tail -5 "$out/$name.log"; return 0; }
  echo "$name: $((SECONDS - start)) s"
}

step search $pn layers --out "$out/searched" "${common[@]}" --search.every 1 --search.strength 0.1
searched=$($py -c 'import json, sys; print(*json.load(open(sys.argv[1]))["recommended"])' "$out/searched/layer_search.json")

step leaning $pn mitigate --out "$out/leaning" "${common[@]}" "${seeds[@]}" "${caft[@]}"
step others $pn mitigate --out "$out/leaning" "${common[@]}" "${seeds[@]}" \
  --mitigate.methods caft-grad steer kl replay caft+kl caft+steer
step flip-r1 $pn mitigate --out "$out/leaning" "${common[@]}" "${seeds[@]}" --mitigate.methods caft-flip \
  --mitigate.rank 1 --mitigate.strengths 0.05 0.1 0.15 0.25 0.5 1
# shellcheck disable=SC2086  # the searched layers are words
step searched $pn mitigate --out "$out/searched" "${common[@]}" "${seeds[@]}" "${caft[@]}" --mitigate.layers $searched
for kind in flip pca; do
  for rank in 1 2 4; do
    [[ $kind-$rank == flip-1 ]] && continue  # caft-flip in the leaning folder
    step "$kind-r$rank" $pn mitigate --out "$out/$kind-r$rank" "${common[@]}" "${seeds[@]}" "${caft[@]}" \
      --mitigate.directions "$kind" --mitigate.rank "$rank"
  done
done
# flip directions read from the answers only (the shared chat template dominates every token's)
for rank in 1 2; do
  step "flip-answer-r$rank" $pn mitigate --out "$out/flip-answer-r$rank" "${common[@]}" "${seeds[@]}" "${caft[@]}" \
    --mitigate.directions flip --mitigate.rank "$rank" --mitigate.direction-tokens answer
done
for tokens in all answer; do  # where the spill-over's change sits against the target's (no training)
  step "geometry-$tokens" $pn geometry --out "$out/leaning" "${common[@]}" --mitigate.direction-tokens "$tokens"
done

# The best reading at 90% kept over every folder, and the options that reproduce it elsewhere.
read -r folder method strength < <($py - "$out" <<'PY'
import json, pathlib, sys
best = None
for path in sorted(pathlib.Path(sys.argv[1]).glob("*/mitigation.json")):
    for row in json.loads(path.read_text())["league"]:
        if best is None or row["ctg_reduction"]["value"] > best[0]:
            best = (row["ctg_reduction"]["value"], path.parent.name, row["method"], row["strength"])
print(*best[1:])
PY
)
echo "best at 90% kept: $method at $strength in $folder"
options=$($py - "$out/$folder/mitigation.json" "$method" <<'PY'
import json, sys
made = json.load(open(sys.argv[1]))["method_settings"][sys.argv[2]]
flags = {"layers": "--mitigate.layers", "directions": "--mitigate.directions", "rank": "--mitigate.rank",
         "direction_tokens": "--mitigate.direction-tokens"}
print(" ".join(f"{flag} {' '.join(map(str, made[k])) if isinstance(made[k], list) else made[k]}"
               for k, flag in flags.items() if made.get(k) is not None))
PY
)
# its strength at 90% kept, halved and doubled: enough for a reading at 90% kept there too
around=(--mitigate.methods "$method" --mitigate.strengths $($py -c 'import sys; s = float(sys.argv[1]); print(*(f"{s * k:.3g}" for k in (0.5, 1, 2)))' "$strength"))
# shellcheck disable=SC2086  # the options are words
step second $pn mitigate --out "$out/best-${SECOND:-race}" --target "${SECOND:-race}" "${common[@]}" "${seeds[@]}" "${around[@]}" $options
# shellcheck disable=SC2086
step left $pn mitigate --out "$out/best-left" --leaning left "${common[@]}" "${seeds[@]}" "${around[@]}" $options

for path in "$out"/*/mitigation.json; do
  echo "== ${path%/mitigation.json}"
  $py -c 'import json, sys; from polineurons.mitigate import league_text; print(league_text(json.load(open(sys.argv[1]))))' "$path"
done
