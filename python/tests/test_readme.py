"""The README's Python snippets run as written (from the repository root, as a reader would);
its Ray command is run by test_ray.py."""

from readme import blocks


def test_readme_python_snippets_run(monkeypatch, weights, tmp_path):
    from conftest import ROOT

    snippets = blocks("python")
    assert len(snippets) == 2
    monkeypatch.chdir(ROOT)
    for code in snippets:
        code = code.replace("/tmp/", f"{tmp_path}/")
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "mobilenet_v2_int8.safetensors").stat().st_size > 3_000_000
    assert (tmp_path / "mobilenet_v2.onnx").stat().st_size > 13_000_000


def test_readme_install_line_is_the_one_ci_checks():
    sh = blocks("sh")
    assert sh[0].startswith("pip install .")
    assert "examples/ray_bulk_classify.py" in sh[1]
