"""`train.stop_at`: end SFT once the student reaches a held-out accuracy target.

How fast a tiny student learns the same data varies several-fold with its seed, so a fixed
step count gives a student anywhere from guessing to perfect; a target gives one just good
enough, which is what a student meant for reinforcement learning afterwards needs.
"""

from __future__ import annotations

from pai_distil.core.config import StopAt
from pai_distil.core.verifiers import check

from pai_distil_jobs.models.generation import generate
from pai_distil_jobs.data.problems import load_problems
from pai_distil_jobs.endpoints.prompts import user_message


class AccuracyTarget:
    """Greedy pass@1 on held-out problems, compared with the target; called by the trainer."""

    def __init__(self, cfg: StopAt, tokenizer, log=print):
        self.cfg, self.tokenizer, self.log = cfg, tokenizer, log
        self.every = cfg.every
        self.problems = load_problems(cfg.problems, None, prefix="stop-at")
        self.prompts = [user_message(p) for p in self.problems]

    def __call__(self, model, step: int) -> tuple[bool, dict]:
        """(target reached, metrics to log) for `model` at `step`."""
        outs = generate(model, self.tokenizer, self.prompts, self.cfg.max_new_tokens)
        accuracy = sum(check(p, o["text"]).correct for p, o in zip(self.problems, outs)) / len(self.problems)
        reached = accuracy >= self.cfg.accuracy
        self.log(f"step {step}: held-out accuracy {accuracy:.1%} on {len(self.problems)} problems "
                 f"(stop_at {self.cfg.accuracy:.1%})" + ("; target reached, training ends here" if reached else ""))
        return reached, {"heldout_accuracy": round(accuracy, 4)}
