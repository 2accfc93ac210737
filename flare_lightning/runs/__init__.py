"""Run bookkeeping: where a command writes (the run folder, its lock, SLURM jobs), what it
records (config, hyperparameters, provenance, metrics.csv), checkpoint files and the checks
of what they fix, and loading a finished run back for notebooks and scripts.

The names below are what notebooks and scripts use (``flare_lightning.runs`` was one module
before it became this package; these names keep that import path working).
"""

from flare_lightning.runs.discovery import BEST, LAST, latest_run, run_labels
from flare_lightning.runs.loading import load_datamodule, load_module, module_from_checkpoint

__all__ = ["BEST", "LAST", "latest_run", "load_datamodule", "load_module", "module_from_checkpoint", "run_labels"]
