"""The job image's own check, `python -m pai_distil_jobs.smoke`: run by every image build, and on a GPU.

Why more than imports: an image whose pins do not fit its torch still imports. transformers 5
switches PyTorch off below torch 2.6 (`AutoModelForCausalLM` is then a placeholder that fails at
the first model load), so an image that only imported its packages built green and failed every
job. This check saves a tiny Qwen3 model, loads it back with `AutoModelForCausalLM`, and trains
one step with TRL's `SFTTrainer` over accelerate: the chain every training stage uses.

    python -m pai_distil_jobs.smoke          # in the build: on the CPU
    python -m pai_distil_jobs.smoke --cuda   # on a GPU node: the step runs on cuda:0 in bf16, vLLM imports

It prints one JSON line of the versions it found, and exits 1 with one line naming what failed.
Every job checks the GPU part at its first model load (`require_usable_gpus`): a container that
was given GPUs its torch cannot use fails in one line instead of training on the CPU for hours.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import pkgutil
import sys
import tempfile
from pathlib import Path

from pai_distil_jobs.models.gpus import SmokeError, check_cuda

STACK = ("torch", "transformers", "trl", "accelerate", "peft", "datasets", "deepspeed", "vllm")


def versions() -> dict[str, str | None]:
    """The installed version of each package of the training stack (None: not installed)."""
    out = {}
    for name in STACK:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def check_imports(cuda: bool) -> None:
    """transformers sees a usable torch; the model class, TRL, DeepSpeed and every stage entrypoint import."""
    import torch
    import transformers
    from transformers.utils import is_torch_available

    if not is_torch_available():
        raise SmokeError(f"transformers {transformers.__version__} finds torch {torch.__version__} unusable (too old "
                         "for it): pin a torch that fits, or resolve the requirements against this torch")
    from transformers import AutoModelForCausalLM  # noqa: F401 - the import is the check
    from trl import GRPOTrainer, SFTTrainer  # noqa: F401

    if importlib.util.find_spec("deepspeed") is not None:  # in every image; a dev venv may lack it
        import deepspeed  # noqa: F401
    import pai_distil_jobs.stages as stages

    for module in pkgutil.iter_modules(stages.__path__, stages.__name__ + "."):
        importlib.import_module(module.name)
    if cuda and importlib.util.find_spec("vllm") is not None:
        import vllm  # noqa: F401 - GRPO's rollouts: imports only where its CUDA kernels can load


def train_one_step(cuda: bool) -> float:
    """Save a micro preset, load it with AutoModelForCausalLM, train one SFT step; the step's loss."""
    import datasets
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from pai_distil_jobs.models.models import build_preset

    datasets.disable_progress_bars()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                          {"role": "assistant", "content": f"<think>{i} + {i} = {2 * i}</think>{2 * i}"}]}
            for i in range(4)]
    with tempfile.TemporaryDirectory(prefix="pai-distil-smoke-") as tmp:
        model, tokenizer = build_preset("micro", seed=0)
        model.save_pretrained(Path(tmp) / "model")
        tokenizer.save_pretrained(Path(tmp) / "model")
        model = AutoModelForCausalLM.from_pretrained(Path(tmp) / "model", dtype=torch.float32)
        before = next(model.parameters()).detach().clone()
        args = SFTConfig(output_dir=str(Path(tmp) / "out"), max_steps=1, per_device_train_batch_size=4,
                         learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to="none",
                         use_cpu=not cuda, bf16=bf16, disable_tqdm=True, max_length=64, dataloader_num_workers=0)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
        loss = trainer.train().training_loss
        after = next(trainer.model.parameters()).detach().to(before.device)
    if not loss == loss or loss <= 0:  # NaN or nothing learned from
        raise SmokeError(f"one SFT step gave loss {loss}")
    if torch.equal(before, after):
        raise SmokeError("one SFT step left the weights unchanged")
    return float(loss)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pai_distil_jobs.smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", action="store_true", help="also check the GPU, train on it and import vLLM")
    args = parser.parse_args(argv)
    report: dict = {"versions": versions()}
    try:
        if args.cuda:
            report["gpu"] = check_cuda()
        check_imports(args.cuda)
        report["loss"] = round(train_one_step(args.cuda), 4)
    except SmokeError as e:
        print(f"pai-distil smoke check failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
