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

stamp=.venv/.crab-installed
want=$(cat requirements/*.txt pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "setup: creating .venv (first run takes a few minutes: torch is large)"
[ -x .venv/bin/python ] || python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
pip=(.venv/bin/python -m pip install -q -c requirements/constraints.txt)
"${pip[@]}" -r requirements/requirements.txt
# lerobot's own pins ask for torch<2.11; requirements.txt replaces them (the reasons are written there).
"${pip[@]}" --no-deps -r requirements/lerobot.txt
.venv/bin/python -m pip install -q --no-deps -e .
.venv/bin/python -m crab.envcheck
echo "$want" > "$stamp"
