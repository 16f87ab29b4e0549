"""A disk that fills up under a real run, on a real small file system (a tmpfs mounted for the test, so root is
needed; skipped, saying so, otherwise): the run stops with one line naming what was being written and the space
left, the previous checkpoint stays intact, nothing half-written is left for a rerun to trust, and the rerun after
space is freed ends on the uninterrupted run's exact weights. The dump of `delphi data` likewise."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from test_checkpoints import assert_same_weights, run, steps_logged, uninterrupted  # noqa: F401 (a fixture)
from trainer.checkpoints import STAGING, complete_checkpoints, marker_problem
from trainer.cli import main as delphi
from trainer.disk_space import model_bytes
from trainer.errors import RunError
from trainer.paths import CHECKOUT as REPO_ROOT


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs at tmp_path/disk, and `fill(leave)`: a file taking all its free space but `leave` bytes."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root (and mount)")
    filler = disk / "filler"

    def fill(leave: int) -> Path:
        filler.unlink(missing_ok=True)
        filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - leave))
        return filler

    try:
        yield disk, fill
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_too_little_space_for_the_next_checkpoint_stops_before_writing_it(uninterrupted, small_disk, tiny_model_dir,
                                                                           tokenizer):
    disk, fill = small_disk
    out = disk / "out"
    size = sum(p.stat().st_size for p in (uninterrupted / "checkpoint-2").rglob("*") if p.is_file())
    filler = fill(int(size * 1.5))  # room for checkpoint-2, not for checkpoint-4 beside it
    with pytest.raises(RunError) as stop:
        run(tiny_model_dir("gpt_neox"), out, tokenizer)
    line = str(stop.value)
    assert re.fullmatch(rf"not enough space to write checkpoint-4 in {out}: about 2\.7 MiB needed, [\d.]+ (KiB|MiB) "
                        rf"free; {out}/checkpoint-2 is intact; free space and run the same command again to resume "
                        rf"from it", line), line
    assert [c.step for c in complete_checkpoints(out)] == [2] and not (out / STAGING).exists()
    filler.unlink()
    assert run(tiny_model_dir("gpt_neox"), out, tokenizer).global_step == 6
    assert_same_weights(uninterrupted, out)
    assert steps_logged(out) == [1, 2, 3, 4, 5, 6]


def test_a_disk_that_fills_up_during_a_save_leaves_nothing_half_written(uninterrupted, small_disk, tiny_model_dir,
                                                                        tokenizer):
    """The free space passes the check made before the first checkpoint (the model's and optimizer's bytes) but
    not the whole save (tokenizer, RNG and trainer state too): torch's writer runs out of space part-way."""
    disk, fill = small_disk
    out = disk / "out"
    estimate = model_bytes(AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt_neox")))
    filler = fill(estimate + 48 * 1024)
    with pytest.raises(RunError) as stop:
        run(tiny_model_dir("gpt_neox"), out, tokenizer)
    line = str(stop.value)
    assert re.fullmatch(rf"the disk is full: writing checkpoint-2 in {out} failed with [\d,.]+ (bytes|KiB) left; the "
                        rf"partial write was removed; no checkpoint was saved before it; free space and run the same "
                        rf"command again", line), line
    assert not list(out.glob("checkpoint-*")) and not (out / STAGING).exists()
    filler.unlink()
    assert run(tiny_model_dir("gpt_neox"), out, tokenizer).global_step == 6
    assert_same_weights(uninterrupted, out)
    assert all(marker_problem(c.path) is None for c in complete_checkpoints(out))


def test_a_dump_to_a_full_disk_is_one_line_and_leaves_no_file(small_disk, tiny_model_dir, tmp_path, capsys):
    disk, fill = small_disk
    section = {"d": {"datasets": [{"alpaca": {"input_file_path": str(REPO_ROOT / "data/alpaca/sample.json")}}],
                     "model_name": str(tiny_model_dir("gpt_neox")), "max_length": 64,
                     "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")}}
    (tmp_path / "d.yaml").write_text(json.dumps(section))
    fill(0)
    code = delphi(["data", "--config_file", str(tmp_path / "d.yaml"), "--configs", "d", "--dump",
                   str(disk / "d.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: the disk is full: writing the dump d.jsonl in {disk} failed with 0 bytes left; "
                          f"the partial write was removed"), err
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]
