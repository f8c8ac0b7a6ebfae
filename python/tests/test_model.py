"""The Python package against the `mnv2` command line (bit-identical outputs), its numpy
interop, threads, the GIL, and its errors."""

import io
import json
import pydoc
import threading
import time

import numpy as np
import pytest

import mobilenetv2
from conftest import PHOTOS

MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def batch(n, h=224, w=224, seed=0):
    """Random pixels normalised as torchvision does: the range a real input has."""
    rng = np.random.default_rng(seed)
    return ((rng.random((n, 3, h, w), dtype=np.float32) - MEAN) / STD).astype(np.float32)


def test_run_is_bit_identical_to_the_cli(model, weights, mnv2, tmp_path):
    for n, h, w in [(3, 224, 224), (1, 160, 192)]:
        x = batch(n, h, w, seed=n)
        np.save(tmp_path / "x.npy", x)
        mnv2("run", "--weights", weights, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", "--threads", 2)
        cli = np.load(tmp_path / "y.npy")
        got = model.run(x)
        assert got.dtype == np.float32 and got.shape == (n, 1000)
        assert np.array_equal(got, cli), f"max |diff| {np.abs(got - cli).max()} at {n}x{h}x{w}"


def test_bf16_run_is_bit_identical_to_the_cli(weights, mnv2, tmp_path):
    """precision="bf16" is `mnv2 run --precision bf16`, bit for bit; near fp32, not equal."""
    bf16 = mobilenetv2.Model.load(weights, threads=2, precision="bf16")
    assert bf16.precision == "bf16" and "precision=bf16" in repr(bf16)
    x = batch(2, seed=7)
    np.save(tmp_path / "x.npy", x)
    mnv2("run", "--weights", weights, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", "--threads", 2,
         "--precision", "bf16")
    got = bf16.run(x)
    assert np.array_equal(got, np.load(tmp_path / "y.npy"))
    fp32 = mobilenetv2.Model.load(weights, threads=2).run(x)
    assert not np.array_equal(got, fp32)
    assert np.abs(got - fp32).max() < 0.2  # (random pixels: near-tied logits, so no top-1 check)
    with pytest.raises(mobilenetv2.Error, match="unknown precision `fp64`"):
        mobilenetv2.Model.load(weights, precision="fp64")


def test_classify_equals_the_cli_json(model, weights, mnv2):
    photos = [PHOTOS / "chelsea.png", PHOTOS / "grace_hopper.jpg", PHOTOS / "camera.png", PHOTOS / "rocket.jpg"]
    photos += sorted((PHOTOS / "formats").glob("*"))[:6]  # more than one chunk of 8
    cli = json.loads(mnv2("classify", "--weights", weights, "--json", "--top", 5, "--threads", 2, *photos))
    got = model.classify([str(p) for p in photos], top=5)
    assert len(got) == len(cli) == len(photos)
    for g, c in zip(got, cli):
        assert g["image"] == c["image"]
        assert [(t["index"], t["label"]) for t in g["top"]] == [(t["index"], t["label"]) for t in c["top"]]
        # serde_json prints the shortest decimal that reads back as the same f32.
        assert [np.float32(t["prob"]) for t in g["top"]] == [np.float32(t["prob"]) for t in c["top"]]
    assert got[0]["top"][0]["label"] == "Egyptian cat"


def test_every_kind_of_image_gives_the_same_result(model):
    from PIL import Image

    path = PHOTOS / "chelsea.png"  # PNG: PIL's pixels are the library's decoder's
    data = path.read_bytes()
    pil = Image.open(io.BytesIO(data))
    arr = np.asarray(pil.convert("RGB"))
    by_path = model.classify(path, top=3)[0]  # os.PathLike, a single image
    assert by_path["image"] == str(path)
    for image in [data, bytearray(data), pil, arr, arr[:, ::-1][:, ::-1]]:  # the last: strided view
        r = model.classify([image], top=3)[0]
        assert r["image"] is None
        assert r["top"] == by_path["top"]
    assert model.classify([], top=3) == []


def test_numpy_interop_errors(model):
    x = batch(1)
    with pytest.raises(mobilenetv2.Error, match="float32.*astype"):
        model.run(x.astype(np.float64))
    with pytest.raises(mobilenetv2.Error, match="4-D"):
        model.run(x[0])
    with pytest.raises(mobilenetv2.Error, match="C-contiguous"):
        model.run(x[:, :, ::2])
    with pytest.raises(mobilenetv2.Error, match="C-contiguous"):
        model.run(np.asfortranarray(x))
    with pytest.raises(mobilenetv2.Error, match="3 channels"):
        model.run(np.zeros((1, 4, 32, 32), np.float32))
    with pytest.raises(mobilenetv2.Error, match="numpy array"):
        model.run(x.tolist())
    bad = x.copy()
    bad[0, 1, 2, 3] = np.nan
    with pytest.raises(mobilenetv2.Error, match="not finite"):
        model.run(bad)
    with pytest.raises(mobilenetv2.Error, match="uint8"):
        model.classify(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(mobilenetv2.Error, match="HxWx3"):
        model.classify(np.zeros((8, 8), np.uint8))
    with pytest.raises(mobilenetv2.Error, match="expected a path"):
        model.classify([42])
    assert issubclass(mobilenetv2.Error, ValueError)


def test_any_batch_size_and_a_contiguous_input_is_not_copied(model):
    assert model.run(np.zeros((0, 3, 224, 224), np.float32)).shape == (0, 1000)
    x = batch(5, 96, 96, seed=3)
    whole = model.run(x)
    # A C-contiguous view into a bigger array is read in place, from its own offset.
    part = model.run(x[2:4])
    assert np.array_equal(part, model.run(x[2:4].copy()))
    # The engine's blocking depends on the batch size: rows agree to float rounding only.
    assert np.allclose(part, whole[2:4], rtol=1e-5, atol=1e-5)
    x.setflags(write=False)  # read-only arrays are accepted
    assert np.array_equal(model.run(x), whole)


def test_one_model_from_several_threads(model):
    inputs = [batch(2, 128, 128, seed=s) for s in range(6)]
    expected = [model.run(x) for x in inputs]
    results = [None] * len(inputs)

    def work(i):
        for _ in range(2):
            results[i] = model.run(inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r, e in zip(results, expected):
        assert np.array_equal(r, e)


def test_the_gil_is_released_while_the_engine_runs(weights):
    """A Python thread keeps ticking while one long inference runs."""
    one = mobilenetv2.Model.load(weights, threads=1)
    # Enough images for about 0.4 s on this CPU (32 took 0.4 s on a Zen 4, 0.08 s on a Zen 5),
    # at most 512.
    t0 = time.perf_counter()
    one.run(batch(8))
    per_image = (time.perf_counter() - t0) / 8
    x = batch(min(512, max(32, int(0.4 / per_image) + 1)))
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.002)

    t = threading.Thread(target=ticker)
    t.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    one.run(x)
    t1 = time.perf_counter()
    stop.set()
    t.join()
    # With the GIL held the ticker could not run at all between the call's first and last
    # moments; released, it ticks about every 2 ms (slower on a loaded machine).
    inside = [s for s in ticks if t0 + 0.02 < s < t1 - 0.02]
    assert t1 - t0 > 0.1, "the inference was too short to tell"
    assert len(inside) >= 0.1 * (t1 - t0 - 0.04) / 0.002, f"{len(inside)} ticks in {t1 - t0:.3f} s"


def test_bad_files_raise_errors_naming_them(model, tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(mobilenetv2.Error, match="nope.safetensors"):
        mobilenetv2.Model.load(missing)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"certainly not a state dict")
    with pytest.raises(mobilenetv2.Error, match="junk.pth") as e:
        mobilenetv2.Model.load(junk)
    assert "\n" not in str(e.value)
    broken = tmp_path / "broken.png"
    broken.write_bytes((PHOTOS / "chelsea.png").read_bytes()[:200])
    with pytest.raises(mobilenetv2.Error, match="broken.png"):
        model.classify([PHOTOS / "camera.png", broken])
    with pytest.raises(mobilenetv2.Error, match=r"<bytes #1>"):
        model.classify([(PHOTOS / "camera.png").read_bytes(), b"GIF89a..."])
    with pytest.raises(mobilenetv2.Error, match="threads"):
        mobilenetv2.Model.init(0.35, 64, threads=0)
    with pytest.raises(mobilenetv2.Error, match="mode"):
        mobilenetv2.Model.init(0.35, 64, mode="warp")
    with pytest.raises(mobilenetv2.Error, match="top"):
        model.classify(PHOTOS / "camera.png", top=0)


def safetensors_parts(path):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"] = {k: json.loads(v) if v[:1] in "{[" else v for k, v in header["__metadata__"].items()}
    return header, raw[8 + n :]


def test_quantize_save_and_export_write_the_cli_s_files(weights, mnv2, tmp_path):
    model = mobilenetv2.Model.load(weights, threads=2)
    calib = batch(4, seed=9)
    np.save(tmp_path / "calib.npy", calib)
    mnv2("quantize", "--weights", weights, "--calib", tmp_path / "calib.npy", "--method", "minmax", "--out", tmp_path / "cli.safetensors")
    q = model.quantize(calib, method="minmax")
    assert q.quantized and not model.quantized
    q.save(tmp_path / "py.safetensors")
    # The same header (metadata in any key order) and the same tensor bytes.
    assert safetensors_parts(tmp_path / "py.safetensors") == safetensors_parts(tmp_path / "cli.safetensors")
    # The int8 model runs (on the int8 kernels) as the CLI's file does.
    loaded = mobilenetv2.Model.load(tmp_path / "py.safetensors", threads=2)
    x = batch(2, seed=4)
    assert np.array_equal(loaded.run(x), q.run(x))
    agree = (loaded.run(x).argmax(1) == model.run(x).argmax(1)).mean()
    assert agree >= 0.5
    with pytest.raises(mobilenetv2.Error, match="already quantised"):
        q.quantize(calib)

    mnv2("export", "--weights", weights, "--out", tmp_path / "cli.onnx", "--dynamic-batch")
    model.export(tmp_path / "py.onnx", dynamic_batch=True)
    assert (tmp_path / "py.onnx").read_bytes() == (tmp_path / "cli.onnx").read_bytes()
    with pytest.raises(mobilenetv2.Error, match="opset"):
        model.export(tmp_path / "bad.onnx", opset=3)


def test_save_round_trip_and_properties(tmp_path):
    m = mobilenetv2.Model.init(width=0.35, resolution="64x80", classes=10, seed=1, threads=1)
    assert (m.input_size, m.classes, m.width, m.threads, m.mode) == ((64, 80), 10, 0.35, 1, "fast")
    assert m.labels is None and not m.quantized
    m.save(tmp_path / "m.safetensors")
    back = mobilenetv2.Model.load(tmp_path / "m.safetensors", threads=1)
    x = batch(2, 64, 80)
    assert np.array_equal(back.run(x), m.run(x))
    assert back.input_size == (64, 80) and "m.safetensors" in repr(back)
    half = tmp_path / "h.safetensors"
    m.save(half, dtype="f16")
    assert half.stat().st_size < (tmp_path / "m.safetensors").stat().st_size * 0.6
    ref = mobilenetv2.Model.load(tmp_path / "m.safetensors", threads=1, mode="reference")
    assert np.allclose(ref.run(x), m.run(x), atol=1e-4)


def test_help_is_useful():
    text = pydoc.render_doc(mobilenetv2, renderer=pydoc.plaintext)
    for needle in ["Model.load", "classify", "run", "quantize", "export", "Error", "GIL"]:
        assert needle in text, needle
    assert "Bit-identical" in pydoc.render_doc(mobilenetv2.Model.run, renderer=pydoc.plaintext).replace("\n", " ")
    assert mobilenetv2.__version__.count(".") == 2


def test_detector_equals_mnv2_detect_json(mnv2):
    from conftest import ROOT

    graph = ROOT / "weights" / "ssdlite_mobilenet_v2_person.pb"
    photos = [ROOT / "weights" / "calib" / "astronaut.png", PHOTOS / "chelsea.png"]
    assert graph.is_file(), f"{graph} is missing: run `bash scripts/fetch_assets.sh`"
    cli = json.loads(mnv2("detect", "--weights", graph, "--json", "--threshold", 0.3, "--threads", 2, *photos))
    det = mobilenetv2.Detector.load(graph, threshold=0.3, threads=2)
    got = det.detect([str(p) for p in photos])
    assert len(got) == len(cli) == 2
    for g, c in zip(got, cli):
        assert (g["image"], g["size"]) == (c["image"], c["size"])
        assert [(d["class"], d["label"]) for d in g["detections"]] == [(d["class"], d["label"]) for d in c["detections"]]
        for dg, dc in zip(g["detections"], c["detections"]):
            assert np.array_equal(np.float32(dg["box"]), np.float32(dc["box"]))
            assert np.float32(dg["score"]) == np.float32(dc["score"])
    assert any(d["label"] == "person" for d in got[0]["detections"])
    # The same pixels in memory give the same boxes.
    assert det.detect((photos[0]).read_bytes())[0]["detections"] == got[0]["detections"]
    with pytest.raises(mobilenetv2.Error, match="threshold"):
        mobilenetv2.Detector.load(graph, threshold=2.0)
    with pytest.raises(mobilenetv2.Error, match="nope.pb"):
        mobilenetv2.Detector.load(graph.parent / "nope.pb")


def test_signatures_show_their_defaults():
    import inspect

    sig = inspect.signature(mobilenetv2.Model.export)
    assert str(sig) == "(self, /, path, format='onnx', dynamic_batch=False, opset=None, resolution=None)"
    assert str(inspect.signature(mobilenetv2.Model.load)) == "(path, threads=None, mode='fast', precision=None)"


def test_segmenter_equals_mnv2_segment(mnv2, tmp_path):
    from PIL import Image

    from conftest import ROOT

    weights = ROOT / "tests" / "data" / "deeplab" / "w035.safetensors"  # a small DeepLab fixture
    photo = PHOTOS / "coffee.png"
    cli = json.loads(mnv2("segment", "--weights", weights, "--out", tmp_path, "--json", "--threads", 1, photo))[0]
    seg = mobilenetv2.Segmenter.load(weights, threads=1)
    got = seg.segment(str(photo))[0]
    assert (got["image"], got["width"], got["height"]) == (cli["image"], cli["width"], cli["height"])
    mask = np.asarray(Image.open(cli["mask"]))  # the palette PNG's indices are the classes
    assert got["mask"].dtype == np.uint8 and got["mask"].shape == (cli["height"], cli["width"])
    assert np.array_equal(got["mask"], mask)
    assert got["classes"] == cli["classes"]
    assert seg.segment(photo.read_bytes())[0]["classes"] == cli["classes"]
    with pytest.raises(mobilenetv2.Error, match="mobilenet_v2-b0353104.pth"):
        mobilenetv2.Segmenter.load(ROOT / "weights" / "mobilenet_v2-b0353104.pth")  # no DeepLab head
