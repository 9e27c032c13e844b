#!/usr/bin/env bash
# How the shipped sage-smol checkpoint and its ablation (sage_cli/assets/sage-smol/MODEL_CARD.md) are made,
# as the `sage` commands a user would type. Every step is resumable: rerun the script after a stop and
# finished work is skipped (data and facts files, training runs with --resume auto, bench with --resume).
#
#   bash recipes/release/sage-smol.sh data          # normal images, synthetic defects, facts, QA, pairs
#   bash recipes/release/sage-smol.sh train SEED [ROW...]   # the ablation rows (default: all five)
#   bash recipes/release/sage-smol.sh bench SEED [ROW...]   # their benchmarks (default: the five rows and
#                                                   # edpo-guided, below); ROW untrained = no training,
#                                                   # sage-smol-1 / sage-smol-2 = the checkpoint shipped now,
#                                                   # its own yes/no; sage-smol-2-guided: guided (the default
#                                                   # of sage infer; models/guide.py); edpo-guided: the E-DPO row
#                                                   # calibrated and guided as sage-smol 2 is, one-shot (any seed);
#                                                   # sage-smol-2-refs3: the shipped checkpoint given three
#                                                   # references per test image, calibrated for that (a copy), guided
#                                                   # (SHOTS=1: one-shot sets only)
#   bash recipes/release/sage-smol.sh table [--card sage_cli/assets/sage-smol/MODEL_CARD.md]
#                                                   # mean ± spread over the seeds done (--card: into the card)
#   bash recipes/release/sage-smol.sh ship          # seed 0's E-DPO checkpoint into the package (+ facts.txt),
#                                                   # then calibrate
#   bash recipes/release/sage-smol.sh calibrate     # the shipped checkpoint's P(defect), fitted on synthetic
#                                                   # validation pairs only (config.json's "calibration", and
#                                                   # "calibration_zero_shot" for requests without a reference)
#
# bench also keeps each finished run's results.json in $RESULTS (recipes/release/results-2; commit it): the table
# is made from there, so it survives the loss of runs/.
#
# No real defect is trained on: the training images are synthetic defects drawn on normal photos (the
# hazelnut set's train/good) and on generated or CC0 normal images. The real hazelnut defects
# (test/colour, test/crack) and the held-out categories are only benchmarked.
set -euo pipefail

SAGE=${SAGE:-sage}
R=${R:-runs/release}
# the kept bench results (in the repository): results-2 for this recipe (question bank sage-wordings/2);
# recipes/release/results keeps sage-smol 1's recipe and its three-seed ablation
RESULTS=${RESULTS:-recipes/release/results-2}
HAZELNUT=${HAZELNUT:-../shared/data/hazelnut_toy}
SFE_STEPS=${SFE_STEPS:-400}        # SFE, then VERDICT_STEPS more from its checkpoint with the Yes/No token
VERDICT_STEPS=${VERDICT_STEPS:-500}  # weighted VERDICT_WEIGHT (the recipe's 10 learns the wording first and
VERDICT_WEIGHT=${VERDICT_WEIGHT:-40} # the image late: after 400 steps P(yes) was 0.31 on defects, 0.20 on normals;
# with 200 verdict steps (sage-smol 1) P(yes) on the bundled crack / normal pair was 0.54 / 0.36 and "Is this
# hazelnut in perfect condition?" got yes on both; 200 more at weight 40 took them to 0.89 / 0.02)
# share of the verdict steps' batches shown without their reference (data.zero_shot_share). Trained one-shot
# only, sage-smol 2 calls every part normal zero-shot (39.2% on hazelnut zero-shot, below always "No"). 0.25
# was tried (seed 0): zero-shot 42.5% / 53.3% (hazelnut / held out), one-shot 79.2% / 61.3% (from 85.8% /
# 70.7%): not kept
ZERO_SHOT_SHARE=${ZERO_SHOT_SHARE:-0}
DPO_STEPS=${DPO_STEPS:-100}
SCORE_GROUPS=${SCORE_GROUPS:-400}  # QA groups scored for preference pairs (400 groups: ~4,000 pairs; E-DPO uses 200)
TRAIN_CATS=${TRAIN_CATS:-brushed_metal woven_fabric wood_plank gear brick gravel}
HELD_OUT=${HELD_OUT:-ceramic_tile washer grass}
BENCH_PER_KIND=${BENCH_PER_KIND:-1}  # held-out bench: defect images per category and defect kind, + all normals
TOKENS=${TOKENS:-32}
# AUROC from one question asked of every image (the groups' own detection questions vary in wording, and
# P(yes) shifts with the wording): the question sage-smol answers in `make infer`
DETECT=${DETECT:-Is there any defect on the test object?}
# sage calibrate --features: auto = the combination with the best leave-one-category-out balanced accuracy on
# the synthetic VAL (for sage-smol-1 that was the map alone; a model whose P(yes) is learnt may use it)
CALIBRATE_FEATURES=${CALIBRATE_FEATURES:-auto}
CALIBRATE_CATS=${CALIBRATE_CATS:-brushed_metal,woven_fabric,wood_plank,gear}  # TRAIN_CATS' procedural ones
FACTS_KEPT=${FACTS_KEPT:-recipes/release/facts.jsonl}  # the facts seed 2 of the card was trained on (see data)

data() {
    $SAGE data normals --out "$R/normals" --categories all --count 24 --test-count 4 --image-size 224 --seed 0
    # the two sources of normal images, as plain copies: hazelnut's train/good only, never its test/
    for split in train heldout; do
        [ -d "$R/src-$split" ] && continue
        mkdir -p "$R/src-$split.tmp"
        cats=$TRAIN_CATS; [ $split = heldout ] && cats=$HELD_OUT
        for c in $cats; do cp -r "$R/normals/$c" "$R/src-$split.tmp/$c"; done
        if [ $split = train ]; then  # every fifth normal becomes a normal test image of the training set
            mkdir -p "$R/src-train.tmp/hazelnut/train/good" "$R/src-train.tmp/hazelnut/test/good"
            i=0; for f in "$HAZELNUT"/hazelnut/train/good/*; do
                to=train; [ $((i % 5)) = 4 ] && to=test
                cp "$f" "$R/src-train.tmp/hazelnut/$to/good/"; i=$((i + 1))
            done
        fi
        mv "$R/src-$split.tmp" "$R/src-$split"
    done
    $SAGE data synth --from "$R/src-train" --out "$R/synth-train" --image-size 224 --per-image 1 --size 0.004-0.03 --seed 0
    $SAGE data synth --from "$R/src-heldout" --out "$R/synth-heldout" --image-size 224 --per-image 1 --size 0.004-0.03 --seed 1
    # the held-out benchmark: BENCH_PER_KIND defects of every kind and every normal test image per category
    # (a --limit would draw ~97% defects, and detection AUROC needs normals)
    if [ ! -d "$R/bench-heldout" ]; then
        for c in $HELD_OUT; do
            local from="$R/synth-heldout/$c" to="$R/bench-heldout.tmp/$c"
            mkdir -p "$to/test"
            cp -r "$from/train" "$to/train"; cp -r "$from/test/good" "$to/test/good"
            for kind_dir in "$from"/test/*/; do
                kind=$(basename "$kind_dir"); [ "$kind" = good ] && continue
                mkdir -p "$to/test/$kind" "$to/ground_truth/$kind"
                for f in $(ls "$kind_dir" | sort | head -n "$BENCH_PER_KIND"); do
                    cp "$kind_dir/$f" "$to/test/$kind/"; cp "$from/ground_truth/$kind/${f%.png}_mask.png" "$to/ground_truth/$kind/"
                done
            done
        done
        mv "$R/bench-heldout.tmp" "$R/bench-heldout"
    fi
    # the pretrained model's facts, asked once per category (the untrained sage-smol sees no more than that).
    # The answers seed 2 of the card was trained on are kept in $FACTS_KEPT and start the file, so every
    # seed and machine trains on the same facts (greedy replies can change with a machine's arithmetic);
    # only a category without a kept answer is asked, and every image gets its category's facts
    if [ ! -f "$R/facts.jsonl" ] && [ -f "$FACTS_KEPT" ]; then mkdir -p "$R"; cp "$FACTS_KEPT" "$R/facts.jsonl"; fi
    for root in "$R/synth-train" "$R/bench-heldout" "$HAZELNUT"; do
        $SAGE facts extract --from "$root" --out "$R/facts.jsonl" --per-category --which all
    done
    # a QA build worded from an older question bank (prefs/wordings.py) is set aside with the pairs scored on
    # it, and built anew: the checkpoint records the bank it trained on
    local bank; bank=$(py -c 'from sage_cli.prefs.wordings import TRAINING_WORDINGS as w; print(w)')
    if [ -f "$R/prefs/prefs.json" ] && ! grep -q "\"wordings\": \"$bank\"" "$R/prefs/prefs.json"; then
        local old="$R/old-$(date +%Y%m%d-%H%M%S)"
        mkdir -p "$old"; mv "$R/prefs" "$old/"; [ -d "$R/scores" ] && mv "$R/scores" "$old/"
        echo "set aside a QA build of another question bank (not $bank) in $old" >&2
    fi
    [ -f "$R/prefs/prefs.json" ] || $SAGE prefs build --from "$R/synth-train" --out "$R/prefs" --seed 0 --val-frac 0.05 --normal-share 0.5
    # E-DPO's DPO_STEPS x 2 pairs need only a few hundred groups (offline:sbert scores 400 in ~3 min on 2 cores)
    $SAGE score mle "$R/prefs/train.jsonl" --out "$R/scores" --judge offline:sbert --limit "$SCORE_GROUPS"
}

train_row() {  # name, stage, extra overrides...
    local name=$1 stage=$2; shift 2
    local out="$R/seed-$SEED/$name"
    [ -f "$out/checkpoint/config.json" ] && return 0
    $SAGE train "$stage" --out "$out" --facts "$R/facts.jsonl" --resume auto "train.seed=$SEED" train.save_every=50 "$@"
}

sfe_row() {  # name, facts mode: SFE_STEPS steps in NAME, then VERDICT_STEPS more in NAME-v (the row's model)
    local qa="$R/prefs/train.jsonl"
    train_row "$1" sfe --train "$qa" "model.facts_mode=$2" "train.max_steps=$SFE_STEPS"
    train_row "$1-v" sfe --train "$qa" --checkpoint "$R/seed-$SEED/$1/checkpoint" "train.seed=$((SEED + 1))" \
        "train.verdict_weight=$VERDICT_WEIGHT" "train.max_steps=$VERDICT_STEPS" "data.zero_shot_share=$ZERO_SHOT_SHARE"
}

ROWS_ALL="fe edpo dpo sft hard"  # the full model first: it is the one that ships

train() {  # rows...
    local pairs="$R/scores/pairs.jsonl" fe="$R/seed-$SEED/fe-v/checkpoint"
    for row in "$@"; do
        case $row in
            fe) sfe_row fe fe ;;
            sft) sfe_row sft none ;;
            hard) sfe_row hard hard ;;
            edpo) train_row edpo edpo --train "$pairs" --checkpoint "$fe" "train.max_steps=$DPO_STEPS" ;;
            dpo) train_row dpo edpo --train "$pairs" --checkpoint "$fe" edpo.eta=0 edpo.pairs=max \
                     "train.max_steps=$DPO_STEPS" ;;
            *) echo "unknown row $row (rows: $ROWS_ALL)" >&2; exit 2 ;;
        esac
    done
}

bench_one() {  # run folder, model args... (SHOTS="1": the one-shot sets only)
    local out=$1; shift
    for shots in ${SHOTS:-1 0}; do
        $SAGE bench mvtec --root "$HAZELNUT" --out "$out/hazelnut-$shots" --shots "$shots" \
            --max-new-tokens "$TOKENS" --facts "$R/facts.jsonl" --detect-question "$DETECT" --resume "$@"
        $SAGE bench mvtec --root "$R/bench-heldout" --out "$out/heldout-$shots" --shots "$shots" \
            --max-new-tokens "$TOKENS" --facts "$R/facts.jsonl" --detect-question "$DETECT" --resume "$@"
        # the same images asked in wordings no training build writes (prefs/wordings.py)
        $SAGE bench mvtec --root "$HAZELNUT" --out "$out/hazelnut-wordings-$shots" --shots "$shots" --wordings held-out \
            --max-new-tokens "$TOKENS" --facts "$R/facts.jsonl" --detect-question "$DETECT" --resume "$@"
        $SAGE bench mvtec --root "$R/bench-heldout" --out "$out/heldout-wordings-$shots" --shots "$shots" \
            --wordings held-out --max-new-tokens "$TOKENS" --facts "$R/facts.jsonl" --detect-question "$DETECT" \
            --resume "$@"
    done
}

py() {  # the python of $SAGE's environment: ablation_table.py writes through sage_cli.atomic
    if [ -z "${PYTHON:-}" ] && ! command -v "$SAGE" > /dev/null; then
        echo "error: no '$SAGE' command: activate sage's environment or set SAGE=.venv/bin/sage" >&2; exit 2
    fi
    ${PYTHON:-$(dirname "$(command -v "$SAGE")")/python} "$@"
}

bench() {  # rows... (untrained: the SAGE layers before training, seed 0 only; sage-smol-1: the checkpoint
    for row in "$@"; do  # shipped now, benched as a row of its own so that it stays in the tables after it)
        if [ "$row" = untrained ]; then
            bench_one "$R/bench/untrained" --backbone sage-smol
        elif [ "$row" = sage-smol-1 ] || [ "$row" = sage-smol-2 ]; then  # whichever is shipped now, under its name
            bench_one "$R/bench/$row" --checkpoint sage-smol --no-guided
        elif [ "$row" = sage-smol-2-guided ]; then
            bench_one "$R/bench/$row" --checkpoint sage-smol --guided
        elif [ "$row" = sage-smol-2-refs3 ]; then  # several references (sage infer TEST REF1 REF2 REF3): the
            # map's nearest patch comes from all three. Its peaks run lower than with one, so the copy is
            # calibrated on three-reference pairs of the same VAL (sage calibrate --shots 3)
            calibrated_copy sage-smol "$R/sage-smol-2-refs3" --shots 3
            SHOTS=3 bench_one "$R/bench/$row" --checkpoint "$R/sage-smol-2-refs3" --guided
        elif [ "$row" = edpo-guided ]; then  # sage-smol 2's recipe at this seed: E-DPO, calibrated as `calibrate`
            local edpo="$R/seed-$SEED/edpo/checkpoint" cal="$R/seed-$SEED/edpo-cal"  # does, guided; one-shot only
            if [ -f "$edpo/config.json" ]; then
                calibrated_copy "$edpo" "$cal"
                SHOTS=1 bench_one "$R/bench/seed-$SEED/$row" --checkpoint "$cal" --guided
            fi
        else
            local run=$row; case $row in fe | sft | hard) run=$row-v ;; esac  # an SFE row's model is its -v run
            if [ -f "$R/seed-$SEED/$run/checkpoint/config.json" ]; then
                bench_one "$R/bench/seed-$SEED/$row" --checkpoint "$R/seed-$SEED/$run/checkpoint"
            fi
        fi
        if [ -d "$R/bench" ]; then py recipes/release/ablation_table.py "$RESULTS" --add "$R/bench" > /dev/null; fi
    done
}

ship() {  # seed 0's full model, half precision, with generic facts for requests that bring none
    local to=sage_cli/assets/sage-smol card
    card=$(cat "$to/MODEL_CARD.md" 2>/dev/null || true)  # the card is written by hand: keep it
    $SAGE models pack "$R/seed-0/edpo/checkpoint" --out "$to"
    [ -n "$card" ] && printf '%s\n' "$card" > "$to/MODEL_CARD.md"
    # It was trained with fact tokens and needs some; these stand in for a facts file (see MODEL_CARD.md).
    cat > "$to/facts.txt" <<'FACTS'
The object in the image is a manufactured part or material photographed for visual inspection.
A normal part looks like its reference: the same shape, colour, texture and surface finish.
Defects that matter include scratches, cracks, holes, stains, contamination and misplaced material.
A defect changes a small region of the surface compared with the reference.
Scratches and cracks are thin lines; holes are dark pits; stains and contamination change the colour.
Lighting, position and small rotations differ between photos and are not defects.
A defect can weaken the part, let fluids or dirt in, or make it unfit to sell.
The inspector reports whether there is a defect, what kind it is and where it is.
FACTS
}

calibrate_val() {  # the synthetic validation pairs every calibration here is fitted on ($R/calibrate-val)
    # Normal images never used in training: procedural ones of another seed (7; training used 0) and the
    # hazelnut train/good photos, never its test/ nor train/good/00.jpg (the bundled pair's reference). The
    # defects are drawn by `sage data synth` with another seed; nothing real is fitted on. The procedural
    # categories are the training ones only: a threshold fitted on held-out categories (even other images
    # of them) would flatter the held-out bench
    local src="$R/calibrate-src"
    $SAGE data normals --out "$R/calibrate-normals" --categories "$CALIBRATE_CATS" --count 5 --test-count 4 --image-size 224 --seed 7
    if [ ! -d "$src" ]; then
        mkdir -p "$src.tmp/hazelnut/train/good" "$src.tmp/hazelnut/test/good"
        for c in $(ls "$R/calibrate-normals" | grep -v '\.json$'); do cp -r "$R/calibrate-normals/$c" "$src.tmp/$c"; done
        i=0; for f in "$HAZELNUT"/hazelnut/train/good/*; do
            [ "$(basename "$f")" = 00.jpg ] && continue
            to_split=train; [ $((i % 3)) = 2 ] && to_split=test  # every third photo is a normal test pair
            cp "$f" "$src.tmp/hazelnut/$to_split/good/"; i=$((i + 1))
        done
        mv "$src.tmp" "$src"
    fi
    $SAGE data synth --from "$src" --out "$R/calibrate-val" --image-size 224 --per-image 1 --size 0.004-0.03 --seed 11
}

fit_calibration() {  # checkpoint, more `sage calibrate` options: every fit here is on the same VAL pairs,
    # CALIBRATE_LIMIT normal and defective pairs per category (~120 pairs: a few minutes on 2 CPU cores)
    local ckpt=$1; shift
    $SAGE calibrate "$ckpt" --on "$R/calibrate-val" --limit "${CALIBRATE_LIMIT:-12}" "$@"
}

calibrated_copy() {  # checkpoint, out, more `sage calibrate` options: a copy calibrated as `calibrate` does
    # (--features $CALIBRATE_FEATURES), made once; the VAL pairs are made only when it still has to be
    local ckpt=$1 out=$2; shift 2
    grep -q '"calibration"' "$out/config.json" 2> /dev/null && return 0
    calibrate_val
    fit_calibration "$ckpt" --out "$out" --features "$CALIBRATE_FEATURES" "$@"
}

calibrate() {  # P(defect) of the shipped checkpoint, fitted on synthetic validation pairs only
    local to=sage_cli/assets/sage-smol
    calibrate_val
    fit_calibration "$to" --features "$CALIBRATE_FEATURES"
    # and for a test image alone (no reference, no map): P(yes) only, stored as calibration_zero_shot
    fit_calibration "$to" --shots 0
}

case "${1:-}" in
    data) data ;;
    train) SEED=${2:?seed}; shift 2; train ${@:-$ROWS_ALL} ;;
    bench) SEED=${2:?seed}; shift 2; bench ${@:-$ROWS_ALL edpo-guided} ;;
    table) shift
        add=(); [ -d "$R/bench" ] && add=(--add "$R/bench")
        py recipes/release/ablation_table.py "$RESULTS" "${add[@]}" "$@" ;;
    ship) ship; calibrate ;;
    calibrate) calibrate ;;
    *) sed -n '2,23p' "$0"; exit 2 ;;
esac
