"""`python tests/train_until_first_checkpoint.py <train.py arguments>`: the trainer, killed right after
its first checkpoint is written (a run interrupted mid-training). Launched by the multi-process test under
torchrun; process 0 writes the checkpoint and stops, and torchrun then stops the other processes."""

import sys

from crab.training import train


def main() -> None:
    save = train.ckpt.save_checkpoint

    def killed_after_first_checkpoint(*args, **kwargs):
        path = save(*args, **kwargs)
        raise KeyboardInterrupt(f"killed after {path}")

    train.ckpt.save_checkpoint = killed_after_first_checkpoint
    train.main(sys.argv[1:])


if __name__ == "__main__":
    main()
