"""`deepspeed trainer_sft.py --configs ...` from the repository root, as with OASST; see scripts/trainer_sft.py."""
import sys

from scripts.trainer_sft import main

if __name__ == "__main__":
    sys.exit(main())
