"""`python -m trainer.data --configs ...` is `delphi data --configs ...`: the data report."""
import sys

from trainer.cli import main

sys.exit(main(["data", *sys.argv[1:]]))
