# A Python for the project's scripts that is never a developer's own path. Source this file,
# then `py="$(mnv2_python SET)"`:
#
#   - $PYTHON if it is set: used as it is, nothing installed;
#   - else the virtualenv $MNV2_VENV/SET (default: the repository's git-ignored .venv/SET),
#     created with `python3 -m venv` on first use and given SET's packages with pip (again
#     whenever the list below changes).
#
# Sets:
#   torch    the PyTorch references (fixtures, training comparisons): torch, torchvision, pillow,
#            numpy, safetensors
#   interop  the other engines' references (ONNX, Keras, TFLite fixtures): numpy, onnx,
#            onnxruntime, safetensors, tensorflow-cpu, keras, tf_keras, ai-edge-litert, pillow,
#            torch, torchvision
#   coco     the COCO evaluation reference (pycocotools): pycocotools, numpy
#
# Progress goes to stderr; stdout is only the interpreter's path.

mnv2_venv_packages() {
    case "$1" in
        torch) echo "torch torchvision pillow numpy safetensors" ;;
        interop) echo "numpy onnx onnxruntime safetensors tensorflow-cpu keras tf_keras ai-edge-litert pillow torch torchvision" ;;
        coco) echo "pycocotools numpy" ;;
        *) return 1 ;;
    esac
}

mnv2_python() {
    local set="${1:?usage: mnv2_python torch|interop|coco}"
    if [[ -n "${PYTHON:-}" ]]; then
        echo "$PYTHON"
        return
    fi
    local pkgs
    pkgs="$(mnv2_venv_packages "$set")" || {
        echo "mnv2_python: unknown package set '$set' (torch, interop or coco)" >&2
        return 1
    }
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    local venv="${MNV2_VENV:-$root/.venv}/$set"
    if [[ "$(cat "$venv/.mnv2-packages" 2>/dev/null)" != "$pkgs" ]]; then
        echo "mnv2_python: preparing $venv ($pkgs); set PYTHON to use an existing interpreter" >&2
        [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv" >&2 || {
            echo "mnv2_python: python3 -m venv $venv failed (install python3-venv, or set PYTHON)" >&2
            return 1
        }
        # shellcheck disable=SC2086
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $pkgs >&2 || {
            echo "mnv2_python: pip install $pkgs into $venv failed" >&2
            return 1
        }
        echo "$pkgs" >"$venv/.mnv2-packages"
    fi
    echo "$venv/bin/python"
}
