"""The installed command: a wheel built from this checkout, installed into a fresh venv, trains from an empty
directory with the configs it carries (no checkout on the path)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from trainer.paths import CHECKOUT


@pytest.mark.slow
def test_the_wheel_installs_a_delphi_command_that_trains_from_an_empty_directory(tiny_model_dir, tmp_path):
    source, dist, venv, work = tmp_path / "source", tmp_path / "dist", tmp_path / "venv", tmp_path / "empty"
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
    shutil.copytree(CHECKOUT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv*", ".cache", "outputs", "exports", "build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(source)], check=True, capture_output=True, timeout=300)
    wheel, = dist.glob("delphi_trainer-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # The dependencies come from this environment's site-packages (no registry needed); Delphi only from the wheel.
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=300)

    work.mkdir()
    run = {"tiny": {"datasets": [{"alpaca": {"input_file_path": str(CHECKOUT / "data/alpaca/sample.json"),
                                             "size": 8}}],
                    "model_name": str(tiny_model_dir("gpt_neox")), "dtype": "fp32", "max_length": 64,
                    "num_train_epochs": 1, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
                    "warmup_steps": 0, "eval_steps": 100, "save_steps": 100, "report_to": "none",
                    "output_dir": "out", "cache_dir": "cache"}}
    (work / "run.yaml").write_text(json.dumps(run))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    delphi = str(venv / "bin" / "delphi")
    shown = subprocess.run([delphi, "train", "--help"], cwd=work, env=env, capture_output=True, text=True,
                           timeout=300)
    assert shown.returncode == 0 and "reference-pythia-12b" in shown.stdout and "demo-data" in shown.stdout
    trained = subprocess.run([delphi, "train", "--configs", "reference-data", "tiny", "--config_file", "run.yaml"],
                             cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (work / "out" / "model.safetensors").is_file() and (work / "out" / "resolved_config.yaml").is_file()
    located = subprocess.run([str(venv / "bin" / "python"), "-c", "import trainer; print(trainer.__file__)"],
                             cwd=work, env=env, capture_output=True, text=True, check=True).stdout
    assert located.startswith(str(venv))
    packaged = subprocess.run([str(venv / "bin" / "python"), "-c", "from trainer.paths import bundled; "
                               "print(bundled('configs/zero2.json'))"], cwd=work, env=env, capture_output=True,
                              text=True, check=True).stdout.strip()
    assert packaged.startswith(str(venv)) and json.loads(Path(packaged).read_text())["zero_optimization"]
