#!/usr/bin/env bash
# End to end detection (PNG file -> decode -> resize to 300x300 -> SSDLite network -> box decoding
# and NMS -> detections), `mnv2 detect` against TensorFlow running the real frozen graph
# (weights/ssdlite_mobilenet_v2_person.pb: its own resize, network and post-processing), on the
# same photo, 1 and 2 threads, one image at a time. Per-image time excludes loading: mnv2 is
# run on 1 and on N+1 copies of the photo (one process each) and the difference is divided by
# N; TensorFlow loads the graph and warms up once, then times N session runs, each decoding the
# PNG file too. Best of REPS repetitions; peak RSS of each process with the N+1 images.
#
#   bash scripts/bench/detect_e2e_vs_tf.sh        (env: N=50, REPS=3, MNV2=binary, PYTHON with
#                                                   tensorflow-cpu; else the `interop` set)
# Writes bench/results/detect_e2e.{md,json}. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-50}
REPS=${REPS:-3}
PB=weights/ssdlite_mobilenet_v2_person.pb
PHOTO=weights/calib/astronaut.png
[ -f "$PB" ] && [ -f "$PHOTO" ] || bash scripts/fetch_assets.sh
if [ -z "${MNV2:-}" ]; then
  cargo build --release -q -p mnv2
  MNV2=${CARGO_TARGET_DIR:-target}/release/mnv2
fi
source scripts/lib/venv.sh
py="$(mnv2_python interop)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p bench/results
files=()
for i in $(seq 0 "$N"); do ln -s "$PWD/$PHOTO" "$work/p$i.png"; files+=("$work/p$i.png"); done

run_mnv2() { # threads, count -> seconds (stdout), peak KB in $work/rss
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f %M -o "$work/rss" "$MNV2" detect --weights "$PB" --threads "$1" --json "${files[@]:0:$2}" >/dev/null
  t1=$(date +%s.%N)
  python3 -c "print($t1 - $t0)"
}
declare -A mn mrss
for t in 1 2; do
  best=1e9
  for r in $(seq "$REPS"); do
    one=$(run_mnv2 "$t" 1)
    all=$(run_mnv2 "$t" $((N + 1)))
    best=$(python3 -c "print(min($best, ($all - $one) / $N * 1000))")
  done
  mn[$t]=$best
  mrss[$t]=$(( $(tail -1 "$work/rss") / 1024 ))
done

"$py" - "$PB" "$PHOTO" "$N" "$REPS" "${mn[1]}" "${mn[2]}" "${mrss[1]}" "${mrss[2]}" <<'PY'
import json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf
pb, photo, n, reps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
mn = {1: float(sys.argv[5]), 2: float(sys.argv[6])}
mrss = {1: int(sys.argv[7]), 2: int(sys.argv[8])}
gd = tf.compat.v1.GraphDef()
gd.ParseFromString(open(pb, "rb").read())
tfms, tfrss = {}, {}
for threads in (1, 2):
    g = tf.Graph()
    with g.as_default():
        tf.import_graph_def(gd, name="")
        png = tf.compat.v1.placeholder(tf.string, [])
        img = tf.expand_dims(tf.io.decode_png(png, channels=3), 0)
    cfg = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=1)
    sess = tf.compat.v1.Session(graph=g, config=cfg)
    fetch = ["detection_boxes:0", "detection_scores:0", "num_detections:0"]
    data = open(photo, "rb").read()
    def once():
        x = sess.run(img, {png: data})
        return sess.run(fetch, {"image_tensor:0": x})
    for _ in range(3):
        once()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            once()
        best = min(best, (time.perf_counter() - t0) / n * 1000)
    tfms[threads] = best
    tfrss[threads] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
rows = []
md = ["| threads | mnv2 detect (ms/image) | TensorFlow frozen graph (ms/image) | mnv2 / TF | peak RSS mnv2 / TF |",
      "|---|---|---|---|---|"]
for t in (1, 2):
    ratio = mn[t] / tfms[t]
    rows.append(dict(threads=t, mnv2_ms=mn[t], tf_ms=tfms[t], ratio=ratio, mnv2_rss_mb=mrss[t], tf_rss_mb=tfrss[t]))
    md.append(f"| {t} | {mn[t]:.2f} | {tfms[t]:.2f} | **{ratio:.2f}x** | {mrss[t]} MB / {tfrss[t]} MB |")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
head = f"End to end on {os.path.basename(photo)} (decode, resize, network, NMS), one image at a time, best of {reps} x {n} images; {cpu}, load average {os.getloadavg()[0]:.2f} at the end; TensorFlow {tf.__version__}."
text = head + "\n\n" + "\n".join(md) + "\n"
print(text)
os.makedirs("bench/results", exist_ok=True)
for ext, body in (("md", text), ("json", json.dumps(dict(note=head, rows=rows), indent=1) + "\n")):
    tmp = f"bench/results/detect_e2e.{ext}.tmp"
    open(tmp, "w").write(body)
    os.replace(tmp, f"bench/results/detect_e2e.{ext}")
PY
