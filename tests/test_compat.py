"""The upstream behaviours `trainer/compat.py` (and the reliability code behind it) work around, checked against the
pinned versions: an upgrade that changes one of them fails here, by name, instead of silently in a run."""
from __future__ import annotations

import inspect

import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint


def test_the_trainer_resumes_from_the_highest_numbered_directory_whatever_it_holds(tmp_path):
    """Why Delphi chooses the checkpoint itself (trainer.checkpoints): a torn or stray checkpoint-N wins."""
    (tmp_path / "checkpoint-10").mkdir()
    (tmp_path / "checkpoint-999").mkdir()  # empty
    assert get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-999")


def test_the_trainer_writes_checkpoints_in_place_under_get_output_dir_and_rotates_them_itself():
    """The seam TrainerSeams._save_checkpoint relies on: the directory comes from `_get_output_dir`, and the
    rotation (which Delphi turns off with save_total_limit=None) runs inside the save."""
    source = inspect.getsource(Trainer._save_checkpoint)
    assert "run_dir = self._get_output_dir(trial=trial)" in source
    assert "rotate_checkpoints(" in source and "save_total_limit=self.args.save_total_limit" in source


def test_the_per_step_hook_sees_the_loss_and_the_gradient_norm():
    """TrainerSeams._maybe_log_save_evaluate's signature, called after every optimizer step."""
    params = list(inspect.signature(Trainer._maybe_log_save_evaluate).parameters)
    assert params == ["self", "tr_loss", "grad_norm", "model", "trial", "epoch", "ignore_keys_for_eval",
                      "start_time", "learning_rate"]


def test_a_diverged_loss_is_hidden_by_default():
    """logging_nan_inf_filter (True by default) logs a nan/inf loss as the running mean; Delphi turns it off."""
    assert TrainingArguments(output_dir="x", report_to="none").logging_nan_inf_filter is True
    assert "logging_nan_inf_filter" in inspect.getsource(Trainer._run_epoch)


def test_a_resumed_lambda_schedule_keeps_the_checkpoints_peak_learning_rate():
    """Why TrainerSeams._load_optimizer_and_scheduler sets base_lrs again: LambdaLR restores them from the
    checkpoint, so a new learning_rate would be ignored."""
    param = torch.nn.Parameter(torch.zeros(1))
    old = torch.optim.lr_scheduler.LambdaLR(torch.optim.AdamW([param], lr=1.0), lambda step: 1.0)
    new = torch.optim.lr_scheduler.LambdaLR(torch.optim.AdamW([param], lr=2.0), lambda step: 1.0)
    new.load_state_dict(old.state_dict())
    assert new.base_lrs == [1.0]


def test_deepspeed_unpickles_its_checkpoint_files_with_arbitrary_code():
    """Why a DeepSpeed checkpoint is loaded only with Delphi's completion marker (or when the user names it)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    assert "weights_only=False" in inspect.getsource(TorchCheckpointEngine.load)
