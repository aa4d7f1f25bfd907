"""What a submission becomes: the backend-neutral job spec, and the pipeline file."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .base import Strict

BACKENDS = ("process", "local", "pai")  # where a job can run: pai_distil.backends.<name>


class Resources(Strict):
    """What one node of a job asks for; on PAI-DLC it becomes the pod's ResourceConfig."""

    cpu: float | None = Field(None, gt=0, description="vCPUs per node")
    memory_gb: float | None = Field(None, gt=0, description="memory per node, GiB")
    gpu: int = Field(0, ge=0, le=16, description="GPUs per node")
    shared_memory_gb: float | None = Field(None, gt=0, description="/dev/shm per node, GiB (NCCL, data loaders)")
    instance_type: str | None = Field(None, description="ECS instance type per node (PAI public resources)")


class JobSpec(Strict):
    """The backend-neutral description of one job; each backend translates it."""

    run_id: str
    stage: str
    image: str | None = Field(None, description="the job image; unset: the backend's (local: the images default, "
                                                "pai: the config's `image`), filled in when the job starts")
    command: list[str] = Field(description="as the job image runs it: `python` is the image's, which the process "
                                           "backend replaces with this machine's")
    env: dict[str, str] = Field(default_factory=dict, description="variables beside the job contract's")
    config: dict[str, Any]
    inputs: dict[str, str] = Field(default_factory=dict, description="input name -> path or URI, read-only")
    output: str
    checkpoint_dir: str
    nodes: int = Field(1, ge=1)
    procs_per_node: int | None = Field(
        None, ge=1, description="processes per node; unset: one (process, local) or the node's GPU count (pai)")
    resources: Resources = Field(default_factory=Resources)


class PipelineStage(Strict):
    stage: str = Field(description="stage name, e.g. generate, slow-thinking, evaluate")
    inputs: dict[str, str] = Field(default_factory=dict,
                                   description="input name -> id of an earlier stage in this pipeline, or a path")
    config: dict[str, Any] = Field(default_factory=dict, description="the stage's config (see `pai-distil schema STAGE`)")
    nodes: int = Field(1, ge=1)
    procs_per_node: int | None = Field(
        None, ge=1, description="processes per node; unset: one (process, local) or the node's GPU count (pai)")
    resources: Resources = Field(default_factory=Resources, description="what each node asks for (pai)")


class Pipeline(Strict):
    name: str
    backend: Literal[BACKENDS] = "process"
    stages: dict[str, PipelineStage] = Field(min_length=1, description="stage id -> stage; run in dependency order")
