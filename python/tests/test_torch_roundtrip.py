"""The training side of scale-out: a state dict trained in PyTorch (torchvision's
mobilenet_v2, as torchrun/DDP would save it) -> mnv2 -> saved -> loaded back in torchvision,
bit-identical. Needs torch and torchvision, which scripts/ci/python.sh does not install (a
multi-GB download); it runs where they are installed and says why it is skipped elsewhere."""

import json

import numpy as np
import pytest

import mobilenetv2

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch torchvision)")
torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed")


def read_safetensors(path):
    """Tensors of a float32 safetensors file, with numpy only (no extra dependency)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, t in header.items():
        assert t["dtype"] == "F32", (name, t["dtype"])
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a : 8 + n + b], np.float32).reshape(t["shape"])
    return out


def test_torchvision_state_dict_round_trips_bit_identically(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5)
    # A few training steps, so weights and BatchNorm statistics are a trained model's, not init's.
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    net.train()
    for _ in range(3):
        x = torch.randn(4, 3, 96, 96)
        loss = torch.nn.functional.cross_entropy(net(x), torch.randint(0, 10, (4,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    torch.save(net.state_dict(), tmp_path / "trained.pth")

    model = mobilenetv2.Model.load(tmp_path / "trained.pth", threads=1)
    assert (model.width, model.classes) == (0.5, 10)
    model.save(tmp_path / "trained.safetensors")
    back = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5)
    tensors = {k: torch.from_numpy(v.copy()) for k, v in read_safetensors(tmp_path / "trained.safetensors").items()}
    missing, unexpected = back.load_state_dict(tensors, strict=False)
    assert not unexpected
    assert all(k.endswith("num_batches_tracked") for k in missing), missing
    original = net.state_dict()
    for name, t in back.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            assert torch.equal(t, original[name]), name
    back.eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        want = net(x)
        assert torch.equal(back(x), want)
    # And mnv2 runs the trained model to torch's logits (float rounding apart).
    got = model.run(np.ascontiguousarray(x.numpy()))
    assert np.allclose(got, want.numpy(), atol=1e-4, rtol=1e-4), np.abs(got - want.numpy()).max()
