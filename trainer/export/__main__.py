"""`python -m trainer.export RUN_DIR EXPORT_DIR ...` is `delphi export ...`."""
import sys

from trainer.cli import main

sys.exit(main(["export", *sys.argv[1:]]))
