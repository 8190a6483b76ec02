#!/usr/bin/env bash
# The command's outputs before and after a change, byte for byte.
#
#   bash benchmarks/same_outputs.sh OLD_CHECKOUT NEW_CHECKOUT MODEL.onnx
#
# Runs the same seven jobs (built-in samples; a tensor file with --plot and --report; the
# integer model job with --report and --qdq-model, and with --method minmax; FP8, MXFP4 and
# NVFP4 with --qdq-model) with each checkout's code on MODEL (one input "x" of shape
# (N, 3, 48, 192), as PaddleOCR's classifier in tests/real_models.py) and 24 seeded samples,
# then lists every output file that differs. A report is compared by its data (the JSON the
# page holds, timing rows left out), not its page code.
set -u
old=$(realpath "$1"); new=$(realpath "$2"); model=$(realpath "$3")
work=$(mktemp -d)
for side in old new; do
  code=${!side}; out=$work/$side; mkdir -p "$out"; cd "$out"
  cp "$model" m.onnx
  python - <<'PY'
import numpy as np
rng = np.random.default_rng(0)
np.save("w.npy", rng.standard_normal((32, 64)).astype("f4"))
np.savez("d.npz", x=rng.standard_normal((24, 3, 48, 192)).astype("f4"))
PY
  run() { name=$1; shift; PYTHONPATH=$code python -m encanalyze calibrate "$@" > $name.stdout 2> $name.stderr; echo "$name rc=$?" >> rc.txt; }
  run main --output main.json --report main.html
  run tens w.npy --per-channel 0 --output tens.json --report tens.html --format json --plot plots
  run int m.onnx --data d.npz --batch-size 4 --qdq-model q.onnx --output int.json --report int.html --format json
  run int2 m.onnx --data d.npz --batch-size 4 --method minmax --activation-method percentile --qdq-model q2.onnx --output int2.json
  run fp8 m.onnx --data d.npz --batch-size 4 --number-format float8_e4m3fn --qdq-model q8.onnx --output fp8.json --report fp8.html
  run mx m.onnx --data d.npz --batch-size 4 --number-format mxfp4 --qdq-model qb.onnx --output mx.json --report mx.html --format json
  run nv m.onnx --data d.npz --batch-size 4 --number-format nvfp4 --qdq-model qn.onnx --output nv.json
  python - <<'PY'
import glob, json, re
for page in glob.glob("*.html"):
    text = open(page, encoding="utf-8").read()
    payload = text.split('id="report-data">', 1)[1].split("</script>", 1)[0]
    payload = payload.replace("<\\/", "</").replace("<\\!--", "<!--")  # the old escapes
    data = json.loads(payload)  # the new escape (\u003c) is JSON's own
    for key in ("calibration took", "time taken", "report built in"):
        data.get("summary", {}).pop(key, None)
    open(page + ".data.json", "w").write(json.dumps(data, sort_keys=True))
    open(page, "w").write(re.sub(r"<script.*", "", text, flags=re.S))  # the page's code aside
PY
done
cd "$work"
status=0
for f in $(cd old && find . -type f ! -name '*.stderr' ! -name '*.html' | sort); do
  cmp -s "old/$f" "new/$f" || { echo "differs: $f"; status=1; }
done
[ $status = 0 ] && echo "every output identical ($(cd old && find . -type f ! -name '*.stderr' ! -name '*.html' | wc -l) files)"
exit $status
