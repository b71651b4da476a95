"""pegp-stream: online continual learning with PEGP-projected parameter-efficient tuning."""

from pegp_stream.config import LearnerConfig
from pegp_stream.core.learner import Learner, LearnResult, Prediction, create_learner
from pegp_stream.errors import CheckpointError, ConfigError, PegpError, StateMismatchError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "ConfigError", "LearnResult", "Learner", "LearnerConfig", "PegpError", "Prediction",
    "StateMismatchError", "create_learner", "__version__",
]
