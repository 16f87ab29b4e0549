"""Where Delphi's own files are: the package, the configs it carries, and the checkout around it (if any)."""
from __future__ import annotations

from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_ROOT / "configs"  # `configs/` at the repository root links here
CHECKOUT = PACKAGE_ROOT.parent  # the repository when run from a checkout (site-packages when installed)


def bundled(path: str) -> str:
    """A relative path that does not exist from the working directory is looked up in the checkout (the demo's
    `.cache/tiny/...`), then among the package's own files (`configs/zero2.json` of an installed Delphi);
    anything else, a hub name included, is returned as given."""
    local = Path(path)
    if local.is_absolute() or local.exists():
        return path
    for root in (CHECKOUT, PACKAGE_ROOT):
        if (root / local).exists():
            return str(root / local)
    return path


def looks_like_path(name: str) -> bool:
    """A name that can only be a local path (a hub id is `name` or `org/name`): a missing one is reported as a
    missing directory, not as a malformed hub id."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
