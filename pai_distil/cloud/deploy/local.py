"""`deploy local`: the command line of the model server, as a process or in the CPU serving image.

Both run `python -m pai_distil_jobs.serve` (see jobs/serve/); Docker runs it on the host
network, so the server listens on the same loopback address either way. The token travels in
the environment (PAI_DISTIL_SERVE_TOKEN), never on a command line.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from pai_distil.core import dockercli
from pai_distil.core.errors import UserError

TOKEN_ENV = "PAI_DISTIL_SERVE_TOKEN"  # read by jobs/serve/
MODEL_MOUNT = "/model"


@dataclass(frozen=True)
class Serve:
    checkpoint: str
    name: str
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 8
    threads: int | None = None
    reasoning_parser: bool = True

    def server_args(self, checkpoint: str) -> list[str]:
        args = ["-m", "pai_distil_jobs.serve", checkpoint, "--host", self.host, "--port", str(self.port),
                "--served-model-name", self.name, "--max-batch", str(self.max_batch)]
        if self.threads:
            args += ["--threads", str(self.threads)]
        if not self.reasoning_parser:
            args.append("--no-reasoning-parser")
        return args

    def process_argv(self) -> list[str]:
        return [sys.executable, *self.server_args(self.checkpoint)]

    def docker_argv(self, image: str, container: str) -> list[str]:
        # as the checkpoint's owner: weights are often readable by their owner only (0600)
        owner = os.stat(self.checkpoint)
        return [dockercli.binary(), "run", "--rm", "--init", "--name", container, "--network", "host",
                "--user", f"{owner.st_uid}:{owner.st_gid}", "--env", "HOME=/tmp",
                "--volume", f"{self.checkpoint}:{MODEL_MOUNT}:ro", "--env", TOKEN_ENV,
                "--label", "pai-distil.role=serve", image, "python", *self.server_args(MODEL_MOUNT)]

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"


def serving_image(image: str | None) -> str:
    """The CPU serving image: `--image`, else the one of this source tree, which must be built."""
    if image:
        if not dockercli.image_id(image):
            raise UserError(f"image {image!r} is not on this Docker engine; pull or build it first")
        return image
    from pai_distil.cloud import images

    tag = images.plan("serve-cpu").tag
    if not dockercli.image_id(tag):
        raise UserError(f"the serving image {tag} is not built for this version of the code; run "
                        "`pai-distil images build --target serve-cpu --wheelhouse DIR`, or pass --image")
    return tag


def exec_server(serve: Serve, token: str | None, docker_image: str | None = None) -> None:
    """Replace this process with the server (signals then reach it directly); never returns."""
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    if token is not None:
        env[TOKEN_ENV] = token
    if docker_image is None:
        argv = serve.process_argv() + ([] if token is not None else ["--no-auth"])
    else:
        dockercli.require_engine()
        argv = serve.docker_argv(docker_image, f"pai-distil-serve-{serve.port}")
        argv += [] if token is not None else ["--no-auth"]
        env.update(dockercli.env())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)
