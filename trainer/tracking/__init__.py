"""Where metrics go besides `metrics.jsonl`: `report_to` names trackers from `TRACKERS` (wandb, tensorboard,
mlflow), each a module holding everything about one. Every tracker gets the same scalars, the one-off figures (the
data report, the plan, the closing report, the best checkpoint) and the sample generations."""
from trainer.tracking.base import TRACKERS, Tracker, TrackerKind, check_installed, open_trackers, tracker_names

__all__ = ["TRACKERS", "Tracker", "TrackerKind", "check_installed", "open_trackers", "tracker_names"]
