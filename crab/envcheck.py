"""Environment check: `python -m crab.envcheck`.

Prints the versions of the stack and decodes one video frame with torchcodec (lerobot's decoder), so a
broken install says *what* is wrong (a missing module, FFmpeg libraries, a torch/torchcodec mismatch)
instead of failing later inside a DataLoader worker.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path

MODULES = ("torch", "torchvision", "torchcodec", "lerobot", "transformers", "av", "pyarrow", "numpy", "yaml")


def _encode_test_video(path: Path) -> None:
    os.environ.setdefault("SVT_LOG", "1")  # the AV1 encoder otherwise prints its whole config
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libsvtav1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 60 * i, dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def main() -> int:
    problems = []
    print(f"python      {sys.version.split()[0]} ({sys.platform})")
    for name in MODULES:
        try:
            module = importlib.import_module(name)
            print(f"{name:<11} {getattr(module, '__version__', '?')}")
        except Exception as e:  # report every broken import, not only the first
            problems.append(f"cannot import {name}: {type(e).__name__}: {e}")
            print(f"{name:<11} MISSING")
    if not problems:
        try:
            from torchcodec.decoders import VideoDecoder

            with tempfile.TemporaryDirectory() as tmp:
                video = Path(tmp) / "check.mp4"
                _encode_test_video(video)
                frame = VideoDecoder(str(video)).get_frame_at(1).data
            print(f"video       decoded one frame {tuple(frame.shape)} with torchcodec")
        except Exception as e:
            problems.append(
                f"video decoding failed ({type(e).__name__}: {e}); torchcodec needs FFmpeg shared libraries "
                "(Debian/Ubuntu: apt-get install libavcodec59 libavformat59 libavutil57 libswscale6 "
                "libswresample4 libavdevice59 libavfilter8; Windows: a shared FFmpeg build on PATH) and the "
                "torch release it was built for (see requirements/requirements.txt)"
            )
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    print("env ok" if not problems else "env NOT ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
