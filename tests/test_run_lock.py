"""One run per output_dir: a second run on a directory a live run holds is refused in one line naming that run's
pid and host, and the first ends exactly as a lone run would; a lock left by a run that no longer exists is taken
over; one from another host is refused with the way out."""
from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from test_checkpoints import run as train_in_process
from test_checkpoints import steps_logged
from test_resume import cli, tree_hashes  # noqa: F401 (a fixture)
from test_signals import finished, weights, worker
from trainer.errors import ConfigError
from trainer.run_lock import LOCK, _process_start


def lock_of(pid: int, host: str | None = None, started: str | None = "auto") -> str:
    return json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "2026-01-01 00:00:00 UTC",
                       "process_start": _process_start(pid) if started == "auto" else started})


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_a_live_run_on_the_same_host_holds_the_directory(cli, sleeper, capsys):
    out, train = cli
    out.mkdir()
    (out / LOCK).write_text(lock_of(sleeper))
    before = tree_hashes(out)
    assert train() == 2
    err = one_error(capsys)
    assert f"output_dir '{out}' is in use by another training run (pid {sleeper} on host {socket.gethostname()}, " \
           f"started 2026-01-01 00:00:00 UTC)" in err
    assert tree_hashes(out) == before


def test_a_lock_from_another_host_is_refused_with_the_way_out(cli, capsys):
    out, train = cli
    out.mkdir()
    (out / LOCK).write_text(lock_of(12345, host="node-17"))
    assert train() == 2
    err = one_error(capsys)
    assert "pid 12345 on host node-17" in err and f"or delete {out / LOCK} if that run is known to be gone" in err


@pytest.mark.parametrize("left", ["dead-pid", "reused-pid", "torn"])
def test_a_lock_left_by_a_run_that_is_gone_is_taken_over(left, cli, sleeper, capsys):
    out, train = cli
    out.mkdir()
    if left == "dead-pid":
        gone = subprocess.Popen(["true"])
        gone.wait()
        (out / LOCK).write_text(lock_of(gone.pid))
    elif left == "reused-pid":  # the pid now belongs to another process, started later
        (out / LOCK).write_text(lock_of(sleeper, started="1"))
    else:
        (out / LOCK).write_text('{"pid": 4')
    assert train() == 0
    said = capsys.readouterr().out
    assert f"{out / LOCK}: left by a run that is no longer running" in said and "taken over" in said
    assert not (out / LOCK).exists()


@pytest.mark.slow
def test_a_second_run_started_on_a_busy_output_dir_is_refused_and_the_first_ends_as_a_lone_run(tiny_model_dir,
                                                                                             tokenizer, tmp_path):
    model = tiny_model_dir("gpt_neox")
    lone, out, flag = tmp_path / "lone", tmp_path / "out", tmp_path / "at-step-3"
    code, err = finished(worker(model, lone, "none", flag, "full"))
    assert code == 0, err[-3000:]
    first = worker(model, out, "step3", flag, "full")  # waits 3 s at the end of step 3, holding output_dir
    deadline = time.monotonic() + 180
    while not flag.exists():
        assert first.poll() is None, first.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the first run never reached step 3"
        time.sleep(0.02)
    with pytest.raises(ConfigError) as refused:
        train_in_process(model, out, tokenizer)
    assert f"is in use by another training run (pid {first.pid} on host {socket.gethostname()}" in str(refused.value)
    code, err = finished(first)
    assert code == 0, err[-3000:]
    a, b = weights(lone), weights(out)
    assert all((a[k] == b[k]).all() for k in a)
    assert steps_logged(out) == [1, 2, 3, 4, 5, 6] and not (out / LOCK).exists()
