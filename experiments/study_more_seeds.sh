#!/bin/bash
# More seeds for the Chikusei denoising arms of a finished study folder: the seed-to-seed spread of the
# study's three seeds (paired std ~0.8 dB) is larger than the differences between arms, so this reruns
# the real-only arm, the Dirichlet and structure controls and the inferred aid-50 arm with exactly the
# study's settings on more seeds, each arm into <study>/more_seeds/<arm>_s<first>-<last>.
# Usage: experiments/study_more_seeds.sh STUDY_DIR FIRST_SEED LAST_SEED   (one worker; run two with
# disjoint seed ranges on two cores). Pool the results with experiments/study_more_seeds_report.py.
set -euo pipefail
study=$1; first=$2; last=$3
seeds=$(seq "$first" "$last" | tr '\n' ' ')
out="$study/more_seeds"; mkdir -p "$out"
root="$(cd "$(dirname "$0")/.." && pwd)"
common=(--real "$study/data/chikusei/train" --real-test "$study/data/chikusei/test"
        --endmembers "$study/stage1_chikusei/checkpoint/latest.pth" --task denoise --model unet --steps 800
        --pretrain-steps 400 --crop 48 --seeds $seeds --protocol pretrain --finetune-lr-scale 0.3
        --rgb-bands 53 33 14 --no-progress --eval-every 100 --device cpu --threads 1 --profile improved)
tag="s$first-$last"
run() {  # arm, abundance folder, extra args; skipped when its report exists (resumable)
    [ -f "$out/$1_$tag/report.json" ] && { echo "[more seeds] $1 $tag: done earlier"; return; }
    echo "[more seeds] $1 $tag ..."
    python "$root/Evaluate.py" downstream --abundances "$2" --out "$out/$1_$tag" --overwrite "${common[@]}" "${@:3}"
}
run control_dirichlet "$study/control_dirichlet_chikusei"
reuse=(--reuse-real-only "$out/control_dirichlet_$tag/report.json")
run control_structure "$study/control_structure_chikusei" "${reuse[@]}"
run inferred_aid-50 "$study/sets_chikusei/aid-50" "${reuse[@]}"
