"""Weight interpolation between a base policy and a policy fine-tuned from it: the cheap baseline against
forgetting (RETAIN, arXiv 2512.08333) that the anchor and rehearsal are measured against.

    python -m crab.training.interpolate --base outputs/base/step_010000 \
        --finetuned outputs/finetune/step_002000 --mix 0.5 --out outputs/finetune_mix0.5

Every floating-point tensor of the policy becomes theta_base + mix * (theta_finetuned - theta_base): mix 0
is the base, 1 the fine-tuned policy. `--out` is a checkpoint folder like the fine-tuned one (its
`pretrained_model` with the new weights and its pre/post-processors, its `crab_config.yaml`), which
lerobot's `make_policy` and Crab's evaluation load; it holds no training state, so it does not resume. The
two checkpoints must hold the same tensors and the same normalisation statistics (fine-tuning with
`policy.normalization: pretrained` keeps the base's): weights trained on differently scaled inputs do not
mix, so that is refused. `--out` must not exist; it is written beside itself and renamed into place.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from crab.training.crab_smolvla_wrapper import pretrained_folder
from crab.training.files import OutputError, temporary_name

WEIGHTS = "model.safetensors"
NORMALISATION = ("*preprocessor*normalizer_processor.safetensors", "*postprocessor*unnormalizer_processor.safetensors")


class InterpolationError(ValueError):
    pass


def interpolate(base: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor], mix: float) -> dict[str, torch.Tensor]:
    """base + mix * (finetuned - base) per floating-point tensor, computed in float64 and stored in the
    tensor's dtype; other tensors (integer buffers) must be equal and are copied. Refuses other key sets
    or shapes, naming the first tensor that differs."""
    if base.keys() != finetuned.keys():
        only = sorted(base.keys() ^ finetuned.keys())
        raise InterpolationError(f"the two policies hold different tensors (e.g. {only[0]!r}): not one architecture")
    out = {}
    for name, a in base.items():
        b = finetuned[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            raise InterpolationError(f"tensor {name!r}: base {tuple(a.shape)} {a.dtype}, fine-tuned {tuple(b.shape)} {b.dtype}")
        if a.is_floating_point():
            out[name] = (a.double() + mix * (b.double() - a.double())).to(a.dtype)
        elif torch.equal(a, b):
            out[name] = a.clone()
        else:
            raise InterpolationError(f"tensor {name!r} ({a.dtype}) differs between the policies and cannot be mixed")
    return out


def pretrained_model(checkpoint: Path) -> Path:
    """The lerobot policy folder of a checkpoint (`step_XXXXXX` or its `pretrained_model`)."""
    folder = Path(pretrained_folder(checkpoint))
    if not (folder / WEIGHTS).is_file():
        raise InterpolationError(f"{checkpoint}: no {WEIGHTS} (not a checkpoint folder or its pretrained_model)")
    return folder


def check_same_normalisation(base: Path, finetuned: Path) -> None:
    """Refuse two policy folders whose normalisation statistics differ (or are not both there)."""
    for pattern in NORMALISATION:
        files = [sorted(folder.glob(pattern)) for folder in (base, finetuned)]
        if [len(f) for f in files] != [1, 1]:
            raise InterpolationError(f"expected one {pattern} in each of {base} and {finetuned}")
        a, b = (load_file(f[0]) for f in files)
        # Compared flat: a statistic saved from a checkpoint's statistics may keep its values in another
        # shape (an image's count as (1, 1, 1) instead of (1,)).
        if a.keys() != b.keys() or not all(torch.equal(a[k].flatten(), b[k].flatten()) for k in a):
            raise InterpolationError(
                f"{files[0][0].name} differs between {base} and {finetuned}: the policies normalise their inputs "
                "differently (fine-tune with `policy.normalization: pretrained` to keep the base's)"
            )


def write_interpolated(base: Path, finetuned: Path, mix: float, out: Path) -> Path:
    """The checkpoint folder `out` holding the interpolated policy (see the module docstring); returns it."""
    if not 0 <= mix <= 1:
        raise InterpolationError(f"--mix {mix:g} must be in [0, 1] (0: the base, 1: the fine-tuned policy)")
    if out.exists():
        raise OutputError(f"--out {out} exists; name a new folder (nothing was written)")
    base_model, tuned_model = pretrained_model(base), pretrained_model(finetuned)
    check_same_normalisation(base_model, tuned_model)
    weights = interpolate(load_file(base_model / WEIGHTS), load_file(tuned_model / WEIGHTS), mix)
    tmp = temporary_name(out)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(tuned_model, tmp / "pretrained_model")
        save_file(weights, tmp / "pretrained_model" / WEIGHTS, metadata={"format": "pt"})
        config = tuned_model.parent / "crab_config.yaml"
        if config.is_file():  # the evaluation reads the run's settings (e.g. its conditioning) from it
            shutil.copy2(config, tmp / config.name)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=Path, required=True, help="the base policy's checkpoint folder")
    p.add_argument("--finetuned", type=Path, required=True, help="the fine-tuned policy's checkpoint folder")
    p.add_argument("--mix", type=float, required=True, help="0: the base, 1: the fine-tuned policy")
    p.add_argument("--out", type=Path, required=True, help="the new checkpoint folder (must not exist)")
    args = p.parse_args(argv)
    try:
        out = write_interpolated(args.base, args.finetuned, args.mix, args.out)
    except (InterpolationError, OutputError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{out}: base + {args.mix:g} x (fine-tuned - base)")
    return out


if __name__ == "__main__":
    main()
