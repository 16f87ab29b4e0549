"""`deepspeed trainer_sft.py --configs ...` from the repository root, as with OASST: `delphi train --configs ...`."""
import sys

from trainer.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
