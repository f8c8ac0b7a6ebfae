"""examples/ray_bulk_classify.py end to end on a local 2-CPU Ray cluster, run as the README's
Python section writes it: read_images -> map_batches(Classifier) -> Parquet, compared with
the package's own results on the same pixels."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import ROOT
from readme import blocks


def test_ray_data_pipeline_from_the_readme(weights, tmp_path):
    import pyarrow.parquet as pq
    from PIL import Image

    import mobilenetv2

    # The actors run one engine thread each (--threads 1); so does the reference.
    model = mobilenetv2.Model.load(weights, threads=1)

    cmd = shlex.split(next(line for line in blocks("sh")[1].splitlines() if "ray_bulk_classify" in line))
    assert cmd[:2] == ["python", "examples/ray_bulk_classify.py"]
    out = tmp_path / "preds"
    cmd[0] = sys.executable
    cmd[cmd.index("--out") + 1] = str(out)
    cmd += ["--concurrency", "2", "--threads", "1", "--cpus", "2"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    images = ROOT / cmd[cmd.index("--images") + 1]
    files = sorted(f for f in images.rglob("*") if f.suffix in (".png", ".jpg"))
    assert len(files) >= 20 and summary["images"] == len(files)

    rows = pq.read_table(out).to_pylist()
    assert sorted(Path(r["path"]).name for r in rows) == sorted(f.name for f in files)
    by_name = {f.name: f for f in files}
    for r in rows:
        # Ray decodes with PIL (mode RGB); the package classifies the same pixels.
        pixels = np.asarray(Image.open(by_name[Path(r["path"]).name]).convert("RGB"))
        want = model.classify(pixels, top=5)[0]["top"]
        assert r["index"] == [t["index"] for t in want], r["path"]
        assert r["label"] == [t["label"] for t in want]
        assert np.array_equal(np.float32(r["prob"]), np.float32([t["prob"] for t in want]))
    cat = next(r for r in rows if r["path"].endswith("chelsea.png"))
    assert cat["label"][0] == "Egyptian cat"
