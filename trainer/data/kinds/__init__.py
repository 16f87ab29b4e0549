"""The dataset kinds, one module each; `KINDS` is the registry the config, the loader and `--help` read.

Adding a kind is one module defining `KIND = DatasetKind(...)` (defaults, options, reader, example) and one line
below."""
from __future__ import annotations

from trainer.data.kinds import airoboros, alpaca, completion, messages, oasst, sharegpt, text
from trainer.data.kinds.base import DatasetKind

KINDS: dict[str, DatasetKind] = {k.name: k for k in (oasst.KIND, alpaca.KIND, airoboros.KIND, messages.KIND,
                                                       sharegpt.KIND, completion.KIND, text.KIND)}
