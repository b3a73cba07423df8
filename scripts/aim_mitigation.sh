#!/usr/bin/env bash
# Issue 21's measurements: which mitigation, aimed how, cuts the most spill-over at 90% of the target
# kept. One study folder per way of making directions (a folder holds one setting per method):
#   1. the layer search for CAFT (leaning directions, every layer, one seed);
#   2. frontiers over SEEDS seeds, each method at its own default strengths plus stronger ones: CAFT with
#      the leaning direction at the default layers and at the searched ones, with flip directions
#      (rank 1: caft-flip, beside the leaning's in one folder and chart; rank 2, 4; read from the answers
#      only, rank 1, 2) and PCA directions (rank 1, 2, 4); caft-grad, steer, kl, replay, caft+kl, caft+steer;
#      the geometry of the flip change (polineurons geometry, every token and answers only); CAFT
#      (leaning and flip directions) after 2 and 4 epochs over every training item;
#   3. the best reading at 90% kept (method and folder) again on a second target and on the left leaning,
#      at its strength there, halved and doubled;
#   4. the longer fine-tunes read against the quick one's vanilla (polineurons league --against): how much
#      spill-over each costs at the target shift the quick vanilla gives.
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
# longer training (every training item, 2 and 4 epochs): does the ablation leave the target more room
# to find a topic-specific route when the fine-tune has more steps to find it?
for epochs in 2 4; do
  step "epochs-$epochs" $pn mitigate --out "$out/epochs-$epochs" "${common[@]}" "${seeds[@]}" "${caft[@]}" \
    --finetune.epochs "$epochs" --finetune.max-steps None
  step "epochs-$epochs-flip" $pn mitigate --out "$out/epochs-$epochs" "${common[@]}" "${seeds[@]}" \
    --finetune.epochs "$epochs" --finetune.max-steps None --mitigate.methods caft-flip --mitigate.rank 1 \
    --mitigate.strengths 0.1 0.25 0.5 1
done
for tokens in all answer; do  # where the spill-over's change sits against the target's (no training)
  step "geometry-$tokens" $pn geometry --out "$out/leaning" "${common[@]}" --mitigate.direction-tokens "$tokens"
done

# The best reading at 90% kept over every folder (polineurons league), and the options that reproduce it elsewhere.
folders=("$out"/*/mitigation.json)
$pn league "${folders[@]%/mitigation.json}" --out "$out/league.json" > "$out/league.txt"
read -r folder method strength < <($py -c 'import json, pathlib, sys
best = json.load(open(sys.argv[1]))["readings"][0]
print(pathlib.Path(best["folder"]).name, best["method"], best["strength"])' "$out/league.json")
echo "best at 90% kept: $method at $strength in $folder"
options=$($py - "$out/$folder" "$method" <<'PY'
import json, pathlib, sys
folder = pathlib.Path(sys.argv[1])
made = json.loads((folder / "mitigation.json").read_text())["method_settings"][sys.argv[2]]
trained = json.loads((folder / "study.json").read_text())["plans"]["mitigate"]["finetune"]
flags = {"layers": "--mitigate.layers", "directions": "--mitigate.directions", "rank": "--mitigate.rank",
         "direction_tokens": "--mitigate.direction-tokens"}
words = [f"{flag} {' '.join(map(str, made[k])) if isinstance(made[k], list) else made[k]}"
         for k, flag in flags.items() if made.get(k) is not None]
words += [f"--finetune.epochs {trained['epochs']} --finetune.max-steps {trained['max_steps']}"]  # its training length
print(" ".join(words))
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
echo "== every folder, best first"
folders=("$out"/*/mitigation.json)
$pn league "${folders[@]%/mitigation.json}" --out "$out/league.json"
# the longer fine-tunes read against the quick vanilla: CTG reduction at ITS target shift (matched target)
step against $pn league "$out/epochs-2" "$out/epochs-4" --against "$out/leaning" --out "$out/league-against.json"
echo "== the longer fine-tunes against the quick vanilla (matched target, not matched steps)"
cat "$out/against.log"
