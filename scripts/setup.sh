#!/usr/bin/env bash
# Idempotent set-up for a fresh Linux machine: FFmpeg shared libraries (torchcodec needs them), then
# .venv at the repository root with the pinned recipe. A no-op when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

ffmpeg_libs=(libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 libavdevice59 libavfilter8)
# grep without -q reads all of ldconfig's output: with -q it stops at the first match, ldconfig dies of
# SIGPIPE and, under pipefail, the libraries would look missing (and be reinstalled) on every run.
if ! ldconfig -p | grep 'libavcodec\.so\.59' >/dev/null; then
    echo "setup: installing FFmpeg shared libraries: ${ffmpeg_libs[*]}"
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${ffmpeg_libs[@]}" >/dev/null
fi

# A Python >= 3.12 (lerobot 0.6 needs it), 3.12 first (the tested one, requirements/constraints.txt): on
# PATH, else among pyenv's installed versions (pyenv's python3 shim may point at an older one).
find_python() {
    local candidates=(python3.12)
    if command -v pyenv >/dev/null; then
        local root
        root=$(pyenv root)
        candidates+=($(ls -d "$root"/versions/3.12*/bin/python 2>/dev/null | sort -rV))
    fi
    candidates+=(python3.13 python3)
    for py in "${candidates[@]}"; do
        if command -v "$py" >/dev/null && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            command -v "$py"
            return 0
        fi
    done
    return 1
}

stamp=.venv/.crab-installed
want=$(cat requirements/*.txt pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
start=$SECONDS
echo "setup: creating .venv (first run: about 4 minutes here, torch is a 2.2 GB download)"
if [ -x .venv/bin/python ] && ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
    echo "setup: .venv runs $(.venv/bin/python --version) (the lerobot 0.4.4 stack); replacing it with a Python >= 3.12 one"
    rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
    python=$(find_python) || {
        echo "setup: Crab needs Python >= 3.12 (lerobot 0.6 does). Install one (python.org, your package" >&2
        echo "manager, or 'pyenv install 3.12'), put it on PATH as python3.12 or python3, and run this again." >&2
        exit 1
    }
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q -c requirements/constraints.txt -r requirements/requirements.txt
.venv/bin/python -m pip install -q --no-deps -e .
.venv/bin/python -m crab.envcheck
echo "$want" > "$stamp"
echo "setup: .venv ready in $((SECONDS - start)) s"
