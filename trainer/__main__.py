"""`python -m trainer COMMAND ...` is `delphi COMMAND ...` (what torchrun's `-m trainer train` runs)."""
import sys

from trainer.cli import main

sys.exit(main())
