"""Experiment sweeps: one YAML file names the base `--configs`, the keys to vary and how, and the metric to rank by.

    delphi sweep run configs/sweeps/demo-grid.yaml [--dry-run]
    delphi sweep wandb configs/sweeps/demo-grid.yaml     # the same sweep for `wandb sweep` + `wandb agent`
    delphi sweep report outputs/sweeps/demo-grid

Every trial is a plain `delphi train` run in its own directory, started with `--key=value` flags (the form a
wandb agent uses), so a trial can be rerun by hand and resumes like any run. Everything a trial will be given is
checked against the config schema before the first one starts.
"""
