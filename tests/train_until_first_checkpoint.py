"""A training run interrupted right after its first checkpoint is written.

`interrupted_after_first_checkpoint(save)` wraps `checkpoint.save_checkpoint` so that it raises
KeyboardInterrupt once the checkpoint is complete; the tests patch it in (`conftest.train_until_first_checkpoint`).
As a script, `python tests/train_until_first_checkpoint.py <train.py arguments>` runs the trainer so
interrupted: the multi-process test launches it under torchrun, process 0 writes the checkpoint and stops,
and torchrun then stops the other processes.
"""

import sys
from collections.abc import Callable

from crab.training import train


def interrupted_after_first_checkpoint(save: Callable) -> Callable:
    def killed_after_first_checkpoint(*args, **kwargs):
        path = save(*args, **kwargs)
        raise KeyboardInterrupt(f"killed after {path}")

    return killed_after_first_checkpoint


def main() -> None:
    train.ckpt.save_checkpoint = interrupted_after_first_checkpoint(train.ckpt.save_checkpoint)
    train.main(sys.argv[1:])


if __name__ == "__main__":
    main()
