"""Validated specifications: one config model per stage over shared pieces (an endpoint, training
settings, data files), the pipeline file and the job spec.

Everything a user writes is checked here, before anything is started, built or uploaded. Models
forbid unknown fields, so a typo is reported instead of silently ignored. Each stage's module holds
its config; this package re-exports them all, so callers import from one place.
"""
from .base import MAX_INT, Strict, read_mapping, explain, validate  # noqa: F401
from .endpoint import http_url, Service, Endpoint, Teacher, RewardEndpoint  # noqa: F401
from .data import SyntheticProblems, VERIFIER_NAMES, DATA_FORMATS, FieldNames, DataFile, ProblemData, CodeSandbox  # noqa: F401
from .training import Student, DeepSpeed, StopAt, Lora, FSDP, PRESET_TRAINING, CHECKPOINT_TRAINING, Optimisation, Training  # noqa: F401
from .rv_target import RVTarget  # noqa: F401
from .distill import LogitsTeacher, Distill  # noqa: F401
from .generate import Refine, GenerateConfig  # noqa: F401
from .score import ScoreConfig  # noqa: F401
from .teacher_logits import TeacherLogitsConfig  # noqa: F401
from .slow_thinking import SlowThinkingConfig  # noqa: F401
from .adaptive_thinking import RVPolicy, AdaptiveThinkingConfig  # noqa: F401
from .reward_model import Judgment, StudentSamples, RewardTraining, Likelihood, LIKELIHOOD, LIKELIHOOD_WEIGHT, RewardModelConfig  # noqa: F401
from .grpo import Reward, GRPOTraining, GRPOLoss, GRPOConfig  # noqa: F401
from .dpo import DPOLoss, DPOTraining, DPOConfig  # noqa: F401
from .evaluate import EvalModel, EvaluateConfig  # noqa: F401
from .job import Resources, JobSpec, PipelineStage, Pipeline  # noqa: F401
