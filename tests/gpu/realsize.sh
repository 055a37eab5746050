#!/usr/bin/env bash
# Real-size GPU check (issue 4), run by hand on a lent GPU machine, never by CI. The machine needs nnunetv2 and
# its dependencies installed into /tmp/site (wheels for its Python 3.12) and this repository as working directory.
# Usage: realsize.sh data | realsize.sh <configuration> <dataset_id> <planner> <target_spacing_json> <label_mapping_json>
set -euo pipefail
export PYTHONUNBUFFERED=1
REPO=$PWD
ls /tmp/site/nnunetv2 >/dev/null 2>&1 || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$REPO
W=/tmp/realsize; mkdir -p $W; cd $W
CASES="big_000 big_001 big_002 big_003 big_004"
if [ "$1" = data ]; then
  python3 - <<'PY'
import time, numpy as np
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from workflow_scripts.toy_data import make_phantom, _to_image
from workflow_scripts.io import write_image
def one(i):
    p = make_phantom(np.random.default_rng([7, i]), shape=(200, 512, 512), with_metastases=True)
    for sub, arr in (("imagesTr", p.image), ("labelsTr", p.label)):
        write_image(_to_image(arr, p.spacing), Path("resources/big") / sub / f"big_{i:03d}.nii.gz")
    return p.spacing
if __name__ == "__main__":
    t = time.time()
    with ProcessPoolExecutor(5) as pool:
        print(list(pool.map(one, range(5))), f"{time.time() - t:.0f} s")
PY
  python3 -m workflow_scripts make-splits --references $(for c in $CASES; do echo resources/big/labelsTr/$c.nii.gz; done) --settings '{"labels":{"background":0,"primary":1,"metastasis":2}}' --out results/splits/splits_final.json
  exit 0
fi
NAME=$1; ID=$2; PLANNER=$3; SPACING=$4; MAP=$5
CONFIGURATION="{\"$NAME\": {\"dataset_id\": $ID, \"planner\": \"$PLANNER\", \"target_spacing\": $SPACING, \"label_mapping\": $MAP, \"trainer\": \"nnUNetTrainer\", \"folds\": [0], \"trainer_settings\": {\"num_epochs\":3,\"num_iterations_per_epoch\":30,\"num_val_iterations_per_epoch\":5,\"save_every\":1}}}"
SETTINGS="{\"configurations\": $CONFIGURATION}"
TRAIN_SETTINGS="{\"configurations\": $CONFIGURATION, \"compute\": {\"device\": \"cuda\", \"augmentation_workers\": 12}}"
python3 -m workflow_scripts convert-dataset --nnunet-root results/nnunet --images $(for c in $CASES; do echo resources/big/imagesTr/$c.nii.gz; done) --references $(for c in $CASES; do echo resources/big/labelsTr/$c.nii.gz; done) --settings "$SETTINGS" --out results/datasets/$NAME/dataset_summary.json
t0=$(date +%s)
python3 -m workflow_scripts plan-and-preprocess --nnunet-root results/nnunet --threads 16 --settings "$SETTINGS" --splits results/splits/splits_final.json --out results/datasets/$NAME/plans_summary.json > $OUT/plan_$NAME.log 2>&1 || (tail -30 $OUT/plan_$NAME.log; exit 1)
t1=$(date +%s)
python3 -c "import json; s=json.load(open('results/datasets/$NAME/plans_summary.json')); print({k: s[k] for k in ('plans_identifier','spacing','patch_size','batch_size','features_per_stage')})"
python3 -m workflow_scripts train-fold --nnunet-root results/nnunet --threads 16 --plans-summary results/datasets/$NAME/plans_summary.json --fold 0 --settings "$TRAIN_SETTINGS" --out results/training/$NAME/fold_0.json --curves $OUT/curves_$NAME.tsv > $OUT/train_$NAME.log 2>&1 || (tail -40 $OUT/train_$NAME.log; exit 1)
t2=$(date +%s)
python3 -c "
import json; s=json.load(open('results/training/$NAME/fold_0.json'))
print('RESULT $NAME', 'plan+preprocess_s', $t1-$t0, 'train+validate_s', $t2-$t1, 'median_epoch_s(30 it)', round(s['median_epoch_seconds'],2), 'peak_gpu_MiB', round(s['peak_gpu_memory_mb']), 'val', s['validation_cases'])"
cat $OUT/curves_$NAME.tsv | cut -f1,2,7
