"""SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C) in the middle of a real training process: the step in
progress finishes, a complete checkpoint is written, the process ends with one line and the shell's code for the
signal, and the rerun of the same command resumes there and ends on the uninterrupted run's exact weights."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from test_checkpoints import steps_logged
from trainer.checkpoints import MARKER, complete_checkpoints, marker_problem

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "TQDM_DISABLE": "1"}


def worker(model_dir: Path, out: Path, moment: str, flag: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "tests" / "kill_worker.py"), str(model_dir), str(out), moment,
                             str(flag), mode], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finished(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def weights(out: Path) -> dict:
    name = "model.safetensors" if (out / "model.safetensors").is_file() else "adapter_model.safetensors"
    return load_file(out / name)


@pytest.mark.slow
@pytest.mark.parametrize("mode, signum", [("full", signal.SIGTERM), ("lora", signal.SIGTERM),
                                          ("full", signal.SIGINT)], ids=["full-SIGTERM", "lora-SIGTERM",
                                                                         "full-SIGINT"])
def test_a_signal_mid_run_saves_a_complete_checkpoint_and_the_rerun_ends_on_the_uninterrupted_weights(
        mode, signum, tiny_model_dir, tmp_path):
    model = tiny_model_dir("gpt_neox")
    lone, out, flag = tmp_path / "lone", tmp_path / "out", tmp_path / "at-step-3"
    code, err = finished(worker(model, lone, "none", flag, mode))
    assert code == 0, err[-3000:]

    proc = worker(model, out, "step3", flag, mode)
    deadline = time.monotonic() + 180
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the worker never reached step 3"
        time.sleep(0.02)
    os.kill(proc.pid, signum)
    code, err = finished(proc)
    assert code == 128 + signum, err[-3000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: stopped by {signum.name} after step "), err[-3000:]
    saved = complete_checkpoints(out)[-1]
    assert 3 <= saved.step < 6 and f"{saved.path} is complete" in errors[0]
    assert marker_problem(saved.path) is None and not (out / MARKER).exists()  # saved, and the run not finished
    assert not (out / ".delphi.lock").exists()

    code, err = finished(worker(model, out, "none", flag, mode))
    assert code == 0, err[-3000:]
    a, b = weights(lone), weights(out)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert steps_logged(out) == [1, 2, 3, 4, 5, 6]


def zero2(model_dir: Path, tmp: Path, out: str, *signal_at: str, port: int) -> subprocess.CompletedProcess:
    """One 2-rank ZeRO-2 run of tests/zero2_worker.py (CPU ranks, gloo) into tmp/out."""
    if not (tmp / "zero2.json").exists():
        ds_config = json.loads((REPO / "configs" / "zero2.json").read_text())
        ds_config["optimizer"]["params"]["torch_adam"] = True  # avoids JIT-compiling DeepSpeed's fused Adam
        (tmp / "zero2.json").write_text(json.dumps(ds_config))
    env = {**ENV, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(tmp / "torch-ext")}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(port), str(REPO / "tests" / "zero2_worker.py"), str(model_dir), str(tmp), out, "2", "2",
                           *signal_at], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_zero2_on_two_ranks_stops_on_sigterm_to_one_rank_and_resumes_to_the_uninterrupted_weights(tiny_model_dir,
                                                                                                    tmp_path):
    """Rank 0 alone gets SIGTERM at the end of step 2 (a preemption reaching one rank first): both ranks agree to
    stop after step 3, save checkpoint-3 (not a save_steps step) complete, and the rerun ends bit-identical to the
    uninterrupted run (measured so, as two uninterrupted ZeRO-2 runs are on this machine)."""
    model = tiny_model_dir("gpt_neox")
    lone = zero2(model, tmp_path, "lone", port=29571)
    assert lone.returncode == 0, lone.stderr[-3000:]
    stopped = zero2(model, tmp_path, "out", "2", port=29572)
    assert stopped.returncode != 0
    ranks, _, launcher = stopped.stderr.partition("Traceback")  # torchrun reports failed ranks with its own
    assert "Traceback" not in launcher and (not launcher or "ChildFailedError" in launcher), stopped.stderr[-3000:]
    errors = [line for line in ranks.splitlines() if "error: stopped by SIGTERM" in line]
    assert len(errors) == 2 and all("after step 3:" in line for line in errors), stopped.stderr[-3000:]
    out = tmp_path / "out"
    assert [c.step for c in complete_checkpoints(out)] == [2, 3] and not (out / MARKER).exists()
    assert sorted(p.name for p in (out / "checkpoint-3").rglob("*optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    resumed = zero2(model, tmp_path, "out", port=29573)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {out / 'checkpoint-3'}" in resumed.stdout
    a, b = weights(tmp_path / "lone"), weights(out)
    assert all((a[k] == b[k]).all() for k in a)
    assert steps_logged(out) == [1, 2, 3, 4, 5, 6]
