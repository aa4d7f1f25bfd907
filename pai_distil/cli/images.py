"""`pai-distil images`: the job images, buildable on machines that reach no image registry."""

from __future__ import annotations

import json

import click

TARGETS = click.Choice(["cpu", "gpu", "serve-cpu", "serve-gpu"])


def _say(message: str) -> None:
    click.echo(message, err=True)


@click.group()
def images() -> None:
    """Build the images: CPU jobs (--backend local), GPU jobs (PAI), serving (deploy local --docker, PAI-EAS).

    Offline, in three steps: `bootstrap-base` (Debian base from Debian packages), `wheelhouse DIR`
    (every pinned package as a wheel, made with this machine's pip), `build --wheelhouse DIR`
    (the build runs with networking disabled).
    """


@images.command()
@click.option("--target", "-t", "target_name", type=TARGETS, default="cpu", show_default=True,
              help="cpu: the training image for --backend local; gpu: the one for PAI")
@click.option("--base", metavar="IMAGE", help="base image (cpu: pai-distil-base:bookworm; gpu: any with Python 3.11, "
              "by default a PAI PyTorch image for its CUDA toolkit; "
              "serve-cpu: the cpu image; serve-gpu: a vLLM or SGLang image)")
@click.option("--wheelhouse", "wheelhouse_dir", type=click.Path(file_okay=False),
              help="install from this folder of wheels, with the build's network disabled")
@click.option("--pip-cert", type=click.Path(dir_okay=False), help="CA bundle for pip in an online build (a TLS proxy's)")
@click.option("--push", metavar="REGISTRY", help="also push the image to REGISTRY (e.g. registry.cn-hangzhou.aliyuncs.com/ns)")
@click.option("--force", is_flag=True, help="build even when the content-hash tag exists")
@click.option("--dry-run", is_flag=True, help="print the tag, base, build args, network and the versions it installs; build nothing")
def build(target_name, base, wheelhouse_dir, pip_cert, push, force, dry_run):
    """Build a job image, tagged by a hash of everything in it; an unchanged image is not rebuilt."""
    from pai_distil.cloud import images as img

    if dry_run:
        p = img.plan(target_name, base=base, wheelhouse_dir=wheelhouse_dir, pip_cert=pip_cert)
        plan = {"tag": p.tag, "base": p.base, "dockerfile": p.target.dockerfile, "build_args": p.build_args,
                "network": p.network, "files": len(p.files)}
        if p.target.layer is None:  # what the image installs: its lock's versions of the training stack
            plan["versions"] = img.resolved_versions(p.target)
            cuda = img.image_cuda(p.target)
            if cuda:  # DLC installs the driver it is told (Settings.Driver): pre-flight asks for one at least this
                from pai_distil.cloud.pai.preflight import driver_floor

                plan.update(cuda=cuda, driver_floor=driver_floor(cuda))
        click.echo(json.dumps(plan, indent=2))
        return
    click.echo(img.build(target_name, base=base, wheelhouse_dir=wheelhouse_dir, pip_cert=pip_cert, push=push,
                         force=force, log=_say))


@images.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--target", "-t", "target_name", type=TARGETS, default="cpu", show_default=True,
              help="cpu: the training image for --backend local; gpu: the one for PAI")
@click.option("--pip-arg", "pip_args", multiple=True, metavar="ARG",
              help="extra argument for pip, e.g. --pip-arg=--extra-index-url=https://download.pytorch.org/whl/cpu")
def wheelhouse(directory, target_name, pip_args):
    """Put every pinned package of an image, as a wheel, into DIRECTORY (uses this machine's pip)."""
    from pai_distil.cloud import images as img

    click.echo(img.wheelhouse(directory, target_name, tuple(pip_args), log=_say))


@images.command("bootstrap-base")
@click.option("--tag", default="pai-distil-base:bookworm", show_default=True, help="tag of the base image built")
@click.option("--suite", default="bookworm", show_default=True, help="Debian release (bookworm has Python 3.11)")
@click.option("--mirror", default="http://deb.debian.org/debian", show_default=True,
              help="Debian mirror the base image is bootstrapped from")
@click.option("--force", is_flag=True, help="rebuild even when the tag exists")
def bootstrap_base(tag, suite, mirror, force):
    """Make a Debian base image with Python 3.11 from Debian packages (debootstrap + docker import)."""
    from pai_distil.cloud import images as img

    click.echo(img.bootstrap_base(tag, suite=suite, mirror=mirror, force=force, log=_say))


@images.command()
@click.option("--target", "-t", "target_name", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="the image whose packages are locked: cpu or gpu")
@click.option("--pip-arg", "pip_args", multiple=True, metavar="ARG",
              help="extra argument for pip, e.g. --pip-arg=--extra-index-url=https://download.pytorch.org/whl/cu128")
def lock(target_name, pip_args):
    """Re-pin an image's lock with pip: cpu → images/requirements.txt (the `train` extra, DeepSpeed);
    gpu → images/requirements-gpu.txt (the same training stack, CUDA torch, vLLM)."""
    from pai_distil.cloud import images as img

    click.echo(img.lock(target_name, tuple(pip_args), log=_say))


@images.command()
def tag():
    """Print the image `--backend local` runs (the CPU image of this code, or $PAI_DISTIL_IMAGE)."""
    from pai_distil.cloud import images as img

    click.echo(img.default_image())


COMMANDS = [images]
