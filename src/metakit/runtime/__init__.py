"""Training runtime: configs, the generic trainer, checkpoints, evaluation."""

from .checkpoint import CheckpointError, CheckpointManager, load_checkpoint, save_checkpoint
from .config import Config, ConfigError, load_config
from .run import LoadedRun, load_run
from .trainer import NonFiniteLossError, Trainer, TrainResult, train
from .evaluation import EvalResult, evaluate, mean_ci95
