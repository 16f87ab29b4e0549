"""`python -m trainer.sweep run|wandb|report ...` is `delphi sweep ...`."""
import sys

from trainer.cli import main

sys.exit(main(["sweep", *sys.argv[1:]]))
