"""pegp-stream: online continual learning with PEGP-projected parameter-efficient tuning."""

from .config import LearnerConfig
from .errors import CheckpointError, ConfigError, PegpError, StateMismatchError
from .learner import Learner, LearnResult, Prediction, create_learner

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "ConfigError", "LearnResult", "Learner", "LearnerConfig", "PegpError", "Prediction",
    "StateMismatchError", "create_learner", "__version__",
]
