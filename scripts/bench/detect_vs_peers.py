"""A network (the SSDLite-MobileNetV2 detector to its raw outputs, or a DeepLab segmenter to
its upsampled logits) timed in mnv2 beside ONNX Runtime and OpenVINO running the same network
(mnv2's ONNX export), in one run on one machine.

Driven by scripts/bench/detect_vs_peers.sh, which builds mnv2, converts and exports the model
and installs the peers. Every (engine, batch, threads) runs in a fresh process: batch 1 on 1
and 2 threads (>= 10 warm-up runs and >= 1 s, then --runs-b1 timed runs: median, p90), batch
8 on 2 threads (3 warm-up, --runs-b8 timed: images/s = 8 / median). Peak RSS is measured by
/usr/bin/time on a fresh process per engine (batch 1, the most threads, a few runs): mnv2's is
the whole `mnv2 bench` process, the Python peers'
include the interpreter and numpy (~30 MB; `python -c "import numpy"` is printed for scale).
Before each worker the harness waits (<= --max-wait s) for other processes to use < --quiet
CPUs, measures what they used during the worker, and flags the row NOISY above --quiet.
The peers' outputs on the fixed input are compared with ONNX Runtime's (`max |diff|`), which
shows they ran the same network (mnv2's own parity with ONNX Runtime is the test
tests/ssdlite_onnx.rs, 1e-4).

Writes a markdown table to stdout and --out-md, and everything to --out-json.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

WORKER = r"""
import json, sys, time
import numpy as np
engine, model, inp, threads, runs, warm_runs, warm_s = sys.argv[1:8]
threads, runs, warm_runs, warm_s = int(threads), int(runs), int(warm_runs), float(warm_s)
x = np.load(inp)
if engine == "ort":
    import onnxruntime as ort
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    s = ort.InferenceSession(model, o, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    run = lambda: s.run(None, {name: x})
    version = ort.__version__
elif engine == "openvino":
    import openvino as ov
    core = ov.Core()
    m = core.read_model(model)
    m.reshape({m.inputs[0].get_any_name(): list(x.shape)})
    c = core.compile_model(m, "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                                     "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    req = c.create_infer_request()
    def run():
        r = req.infer({0: x})
        return [r[o] for o in c.outputs]
    version = ov.__version__
else:
    raise SystemExit(f"unknown engine {engine}")
outs = run()
t0, n = time.perf_counter(), 0
while n < warm_runs or time.perf_counter() - t0 < warm_s:
    run(); n += 1
times = []
for _ in range(runs):
    t = time.perf_counter(); run(); times.append((time.perf_counter() - t) * 1e3)
times.sort()
np.savez(sys.argv[8], *[np.asarray(o) for o in outs])
print(json.dumps({"median_ms": times[len(times) // 2], "p90_ms": times[int(0.9 * (len(times) - 1))],
                  "min_ms": times[0], "runs": runs, "version": version}))
"""


def cpu_busy():
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        v = [int(t) for t in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def wait_quiet(quiet, max_wait):
    """Waits until other processes use < `quiet` CPUs over 1 s (or max_wait passes)."""
    t0 = time.time()
    ncpu = os.cpu_count() or 1
    while True:
        b0, s0 = cpu_busy()
        time.sleep(1.0)
        b1, s1 = cpu_busy()
        used = ncpu * (b1 - b0) / max(s1 - s0, 1)
        if used < quiet or time.time() - t0 > max_wait:
            return used


def run_worker(cmd, env):
    """Runs a worker; returns (stdout, wall seconds, busy CPU seconds of the machine during it)."""
    b0, s0 = cpu_busy()
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    out, err = p.communicate()
    wall = time.time() - t0
    b1, s1 = cpu_busy()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{err[-2000:]}")
    return out, wall, (b1 - b0) / 100.0


def child_rss(cmd, env, workdir):
    """Peak RSS (bytes) of one fresh process running `cmd`, from /usr/bin/time (a child forked
    straight from this interpreter would count the interpreter's pages until its exec)."""
    out = os.path.join(workdir, "rss.txt")
    p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", out] + cmd, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.decode()[-2000:]}")
    with open(out) as f:
        return int(f.read().split()[-1]) * 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the mnv2 binary")
    ap.add_argument("--weights", required=True, help="the detector for mnv2 (safetensors, from mnv2 convert)")
    ap.add_argument("--onnx", required=True, help="the same network exported by mnv2 export --dynamic-batch")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--resolution", type=int, default=300)
    ap.add_argument("--engines", default="mnv2,ort,openvino")
    ap.add_argument("--mnv2-modes", default="fast", help="comma-separated mnv2 engine modes (fast, streaming), each optionally with a precision: fast-bf16")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch8-threads", type=int, default=2, help="0: no batch-8 rows")
    ap.add_argument("--runs-b1", type=int, default=100)
    ap.add_argument("--runs-b8", type=int, default=30)
    ap.add_argument("--passes", type=int, default=3, help="repeat the suite; the best median per row is kept")
    ap.add_argument("--quiet", type=float, default=0.25)
    ap.add_argument("--max-wait", type=float, default=300)
    ap.add_argument("--label", default="SSDLite-MobileNetV2 (person), 300x300, raw outputs")
    ap.add_argument("--out-md", required=True)
    ap.add_argument("--out-json", required=True)
    a = ap.parse_args()

    import numpy as np

    os.makedirs(a.workdir, exist_ok=True)
    r = a.resolution
    inputs = {}
    for n, seed in [(1, 0), (8, 1)][:1 if a.batch8_threads == 0 else 2]:
        # A network input as the graph's mapping makes it: values in [-1, 1].
        x = np.random.default_rng(seed).uniform(-1, 1, (n, 3, r, r)).astype(np.float32)
        path = os.path.join(a.workdir, f"input_{n}x3x{r}x{r}.npy")
        np.save(path, x)
        inputs[n] = path
    worker_py = os.path.join(a.workdir, "worker.py")
    with open(worker_py, "w") as f:
        f.write(WORKER)

    engines = [e for e in a.engines.split(",") if e]
    modes = [m for m in a.mnv2_modes.split(",") if m]
    threads = [int(t) for t in a.threads.split(",")]
    rows = []  # (engine label, batch, threads)
    for e in engines:
        for label in ([f"mnv2 {m}" for m in modes] if e == "mnv2" else [e]):
            rows += [(label, 1, t) for t in threads] + ([(label, 8, a.batch8_threads)] if a.batch8_threads else [])

    def command(label, batch, t, runs, out_npz):
        if label.startswith("mnv2"):
            # "fast" or "fast-bf16": the engine mode, then an optional --precision.
            mode, _, precision = label.split()[1].partition("-")
            return [a.bin, "bench", "--weights", a.weights, "--input", inputs[batch], "--threads", str(t),
                    "--runs", str(runs), "--mode", mode, "--json"] + (["--precision", precision] if precision else [])
        warm_runs, warm_s = (10, 1.0) if batch == 1 else (3, 0.0)
        return [sys.executable, worker_py, label, a.onnx, inputs[batch], str(t), str(runs), str(warm_runs),
                str(warm_s), out_npz]

    results = {row: [] for row in rows}
    for p in range(a.passes):
        for row in rows:
            label, batch, t = row
            env = dict(os.environ, OMP_NUM_THREADS=str(t), MKL_NUM_THREADS=str(t))
            out_npz = os.path.join(a.workdir, f"out_{label.replace(' ', '_')}_{batch}_{t}.npz")
            runs = a.runs_b1 if batch == 1 else a.runs_b8
            before = wait_quiet(a.quiet, a.max_wait)
            cmd = command(label, batch, t, runs, out_npz)
            out, wall, other = run_worker(cmd, env)
            res = json.loads(out.strip().splitlines()[-1])
            # Others' CPU: the machine's busy time minus what this worker could use at most.
            res["noisy"] = before >= a.quiet or max(0.0, other - t * wall) / wall >= a.quiet
            res["pass"] = p
            results[row].append(res)
            print(f"pass {p + 1}: {label} batch {batch} x{t}: median {res['median_ms']:.2f} ms"
                  f"{' NOISY' if res['noisy'] else ''}", file=sys.stderr, flush=True)

    # Peak RSS: one fresh process per engine, batch 1, 2 threads, a few runs.
    rss = {}
    for label in dict.fromkeys(row[0] for row in rows):
        t = max(threads)
        env = dict(os.environ, OMP_NUM_THREADS=str(t), MKL_NUM_THREADS=str(t))
        cmd = command(label, 1, t, 5, os.path.join(a.workdir, "rss.npz"))
        if label.startswith("mnv2"):
            cmd += ["--warmup", "0"]
        else:
            cmd[cmd.index(inputs[1]) + 3:cmd.index(inputs[1]) + 5] = ["1", "0"]
        rss[label] = child_rss(cmd, env, a.workdir)
    rss["python + numpy (for scale)"] = child_rss([sys.executable, "-c", "import numpy"], os.environ, a.workdir)

    # Output agreement of the peers with ONNX Runtime on the same input.
    agree = {}
    ref = os.path.join(a.workdir, "out_ort_1_1.npz")
    if os.path.exists(ref):
        want = np.load(ref)
        for label in dict.fromkeys(row[0] for row in rows):
            f = os.path.join(a.workdir, f"out_{label.replace(' ', '_')}_1_1.npz")
            if not label.startswith("mnv2") and os.path.exists(f):
                got = np.load(f)
                agree[label] = max(float(np.abs(got[k] - want[k]).max()) for k in want.files)

    def best(row):
        clean = [x for x in results[row] if not x["noisy"]] or results[row]
        return min(clean, key=lambda x: x["median_ms"]), all(x["noisy"] for x in results[row])

    lines = [f"## {a.label}", "",
             f"CPU: {cpu_name()}; {os.cpu_count()} logical CPUs; passes {a.passes}; best median per row.", "",
             "| engine | batch | threads | median ms | p90 ms | images/s | peak RSS MB | max abs diff vs ORT | spread |",
             "|---|---|---|---|---|---|---|---|---|"]
    summary = []
    for row in rows:
        label, batch, t = row
        b, noisy = best(row)
        meds = [x["median_ms"] for x in results[row]]
        spread = (max(meds) - min(meds)) / min(meds) if meds else 0.0
        ips = batch / (b["median_ms"] / 1e3)
        d = agree.get(label)
        lines.append(f"| {label}{' NOISY' if noisy else ''} | {batch} | {t} | {b['median_ms']:.2f} | {b['p90_ms']:.2f} | "
                     f"{ips:.1f} | {rss[label] / 1e6:.1f} | {'' if d is None else f'{d:.1e}'} | {100 * spread:.0f}% |")
        summary.append({"engine": label, "batch": batch, "threads": t, "median_ms": b["median_ms"],
                        "p90_ms": b["p90_ms"], "images_per_s": ips, "noisy": noisy, "passes": results[row],
                        "peak_rss_bytes": rss[label], "max_abs_diff_vs_ort": d})
    # Ratios: mnv2 against the best peer per (batch, threads).
    lines += ["", "| mnv2 / best peer | batch | threads | latency ratio (lower is better) | images/s ratio |",
              "|---|---|---|---|---|"]
    ratios = []
    for label in [l for l in dict.fromkeys(r[0] for r in rows) if l.startswith("mnv2")]:
        for (l2, batch, t) in [r for r in rows if r[0] == label]:
            peers = [s for s in summary if not s["engine"].startswith("mnv2") and s["batch"] == batch and s["threads"] == t]
            if not peers:
                continue
            me = next(s for s in summary if s["engine"] == label and s["batch"] == batch and s["threads"] == t)
            bp = min(peers, key=lambda s: s["median_ms"])
            ratio = me["median_ms"] / bp["median_ms"]
            lines.append(f"| {label} vs {bp['engine']} | {batch} | {t} | {ratio:.2f} | {1 / ratio:.2f} |")
            ratios.append({"engine": label, "peer": bp["engine"], "batch": batch, "threads": t,
                           "latency_ratio": ratio, "throughput_ratio": 1 / ratio})
    lines += ["", f"Peak RSS of `python -c 'import numpy'`: {rss['python + numpy (for scale)'] / 1e6:.1f} MB "
              "(included in the Python peers' figures)."]
    table = "\n".join(lines) + "\n"
    print(table)
    with open(a.out_md, "w") as f:
        f.write(table)
    info = {"label": a.label, "cpu": cpu_name(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "resolution": r, "passes": a.passes, "rows": summary, "ratios": ratios, "peak_rss_bytes": rss,
            "versions": {s["engine"]: s["passes"][0].get("version") for s in summary},
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(a.out_json, "w") as f:
        json.dump(info, f, indent=1)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
