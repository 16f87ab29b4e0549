"""Content digests of input files, remembered by path, size, modification time and inode: the cache key covers
every byte of a dataset file, but reading a multi-gigabyte export again only to find its cache entry would cost
more than a cached run may take (a second)."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from trainer.errors import DataError


def content_digest(path: Path, memo_dir: Path) -> str:
    """sha256 of the file's bytes, computed once per version of the file (any change to its size, mtime or inode
    is a new version)."""
    try:
        st = path.stat()
        stamp = hashlib.sha256(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}".encode()).hexdigest()[:40]
        memo = memo_dir / stamp
        if memo.is_file():
            return memo.read_text()
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    digest = h.hexdigest()
    memo_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=memo_dir, prefix=f".{stamp}")
    with os.fdopen(fd, "w") as f:
        f.write(digest)
    os.replace(tmp, memo)
    return digest
