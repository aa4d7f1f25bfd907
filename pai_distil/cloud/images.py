"""The job images: a Debian base from Debian packages, a wheelhouse, content-addressed builds.

Machines that reach no image registry still build everything: `bootstrap_base` makes the base
with debootstrap and `docker import`, `wheelhouse` downloads the pinned wheels with the host's
pip, and `build` installs them with the build's network disabled. An image is tagged by a hash
of everything that goes into it, so an unchanged image is found, not rebuilt.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from pai_distil.core import dockercli
from pai_distil.core.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
IMAGES_DIR = ROOT / "images"
BASE_TAG = dockercli.BASE_TAG
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# the GPU image's base gives Python 3.11, the CUDA toolkit and compilers (DeepSpeed's JIT ops); its own
# torch is not used: the image's venv has the pinned CUDA torch that every other pin was resolved with
PAI_PYTORCH = "dsw-registry.cn-hangzhou.cr.aliyuncs.com/pai/pytorch-training:2.3-gpu-py311-cu121-ubuntu22.04"
VLLM_BASE = "vllm/vllm-openai:v0.11.0"  # any vLLM or SGLang image with its OpenAI server works as --base
SOURCES = ("pai_distil", "jobs")  # copied into every image: the client package and the job code
IMAGE_ENV = "PAI_DISTIL_IMAGE"  # overrides the image of `--backend local`


@dataclass(frozen=True)
class Target:
    name: str
    dockerfile: str
    requirements: str
    repository: str
    default_base: str
    extras: tuple[tuple[str, str], ...] = ()  # (package, extra): installed with the extra, so pip checks its pins
    # a thin layer: the context is the Dockerfile and these files of images/ (no packages, no sources)
    layer: tuple[str, ...] | None = None
    on_target: str | None = None  # the default base is this target's image of the same code


TARGETS = {
    "cpu": Target("cpu", "Dockerfile.cpu", "requirements.txt", "pai-distil-cpu", BASE_TAG,
                  extras=(("transformers", "torch"),)),
    # CUDA torch, vLLM and the training stack of the CPU image; transformers' `torch` extra holds its torch floor
    "gpu": Target("gpu", "Dockerfile.gpu", "requirements-gpu.txt", "pai-distil-gpu", PAI_PYTORCH,
                  extras=(("transformers", "torch"),)),
    # `deploy local --docker`: the CPU job image (it has the server's code) set up to serve
    "serve-cpu": Target("serve-cpu", "Dockerfile.serve-cpu", "", "pai-distil-serve-cpu", "", layer=(),
                        on_target="cpu"),
    # PAI-EAS: a vLLM or SGLang image with a start script that serves a mounted checkpoint
    "serve-gpu": Target("serve-gpu", "Dockerfile.serve-gpu", "", "pai-distil-serve-gpu", VLLM_BASE,
                        layer=("serve-entrypoint.sh",)),
}


def target(name: str) -> Target:
    if name not in TARGETS:
        raise UserError(f"unknown image target {name!r}; choose one of: {', '.join(TARGETS)}")
    if not (IMAGES_DIR / TARGETS[name].dockerfile).is_file():
        raise UserError(f"{IMAGES_DIR / TARGETS[name].dockerfile} is missing; image builds need a source checkout "
                        "of pai-distil (git clone, then `pip install -e .`)")
    return TARGETS[name]


# -- base image ---------------------------------------------------------------------------------


def bootstrap_base(tag: str = BASE_TAG, *, suite: str = "bookworm", mirror: str = DEBIAN_MIRROR,
                   force: bool = False, log=print) -> str:
    """A minimal Debian image with Python 3.11, made from Debian packages: no image registry needed."""
    dockercli.require_engine()
    if not force and dockercli.image_id(tag):
        log(f"{tag} exists (--force rebuilds it)")
        return tag
    if shutil.which("debootstrap") is None:
        raise UserError("debootstrap is not installed; `apt-get install debootstrap` (Debian/Ubuntu), or pass "
                        "--base IMAGE to `images build` with any image that has python3.11 and python3-venv")
    if os.geteuid() != 0:
        raise UserError("debootstrap needs root; run `sudo pai-distil images bootstrap-base`")
    with tempfile.TemporaryDirectory(prefix="pai-distil-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"debootstrap {suite} from {mirror} (a few minutes) ...")
        _call(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", suite, str(rootfs), mirror],
              "debootstrap")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                     "usr/share/locale"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
        (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
        (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        log(f"docker import → {tag}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run([dockercli.binary(), "import", "--change", 'CMD ["/bin/bash"]',
                                   "--change", "ENV LANG=C.UTF-8", "-", tag],
                                  stdin=tar.stdout, capture_output=True, text=True, env=dockercli.env())
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise UserError(f"docker import failed: {dockercli.last_line(imported.stderr) or 'tar failed'}")
    return tag


def _call(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"{what} failed: {dockercli.last_line(proc.stderr or proc.stdout)}")


# -- pinned requirements ------------------------------------------------------------------------

DEEPSPEED = "deepspeed==0.19.8"  # an sdist: installed after torch, without build isolation
# GRPO's rollouts in the GPU image: the newest vLLM whose own pins admit the training stack below
VLLM = "vllm==0.30.0"
# what trains: held at the CPU lock's versions in the GPU lock, so what CI tests is what trains on GPUs
TRAINING_STACK = ("torch", "transformers", "trl", "accelerate", "peft", "tokenizers", "safetensors", "datasets",
                  "deepspeed")
LOCK_HEADER = """\
# Every package of the {what}, pinned. Part of the image's content hash.
{contents}
# Regenerate with `pai-distil images lock{flag}`.
"""
LOCKS = {
    "cpu": ("CPU job image", "the `train` extra of pai-distil, DeepSpeed, and all they depend on; torch is "
            "the CPU build", ""),
    "gpu": ("GPU job image", "the CPU image's training stack (same torch, transformers, TRL, accelerate, PEFT, "
            "DeepSpeed), PyPI's CUDA build of torch, vLLM, and all they depend on", " --target gpu"),
}


def requirements(tgt: Target) -> list[str]:
    """The `name==version` lines of the target's lock."""
    lines = [line.strip() for line in (IMAGES_DIR / tgt.requirements).read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def install_lines(tgt: Target) -> list[str]:
    """The lock as the image installs it: with the extras whose pins pip must check (transformers[torch]
    declares the torch it needs only there)."""
    extras = dict(tgt.extras)
    return [f"{n}[{extras[_name(n)]}]=={v}" if _name(n) in extras else f"{n}=={v}"
            for n, v in (p.split("==", 1) for p in requirements(tgt))]


def resolved_versions(tgt: Target) -> dict[str, str | None]:
    """The versions the image installs of the training stack and vLLM, from its lock."""
    pins = {_name(p): p.split("==", 1)[1] for p in requirements(tgt)}
    return {name: pins.get(name) for name in (*TRAINING_STACK, "vllm")}


def image_cuda(tgt: Target) -> str | None:
    """The CUDA runtime (major.minor) the image's torch was built with, from its lock's
    `nvidia-cuda-runtime` pin; None for an image without one (cpu)."""
    pins = {_name(p): p.split("==", 1)[1] for p in requirements(tgt)}
    version = next((v for n, v in pins.items() if n.startswith("nvidia-cuda-runtime")), None)
    return ".".join(version.split(".")[:2]) if version else None


def _exact_torch(pins: list[str]) -> list[str]:
    """torch pinned with `===`: that exact build (PyPI's CUDA one), never a CPU build of the same version
    (2.13.0+cpu) that a machine's find-links or extra index offers."""
    return [p.replace("==", "===") if _name(p) == "torch" and "+" not in p else p for p in pins]


def _name(pin: str) -> str:
    return pin.split("==", 1)[0].split("[", 1)[0].strip().lower().replace("_", "-")


def lock(target_name: str = "cpu", pip_args: tuple[str, ...] = (), log=print) -> Path:
    """Resolve a target's packages with pip and write every pin to its lock (images/requirements*.txt).

    cpu: the `train` extra, DeepSpeed and setuptools (which installs the package). gpu: the same plus
    vLLM, with the training stack held at the CPU lock's versions and torch as PyPI's (CUDA) build."""
    tgt = target(target_name)
    if target_name not in LOCKS:
        raise UserError(f"the {target_name} image installs no packages of its own: lock cpu or gpu")
    wanted = [f"{ROOT}[train]", DEEPSPEED, "setuptools>=68"]
    constraints = ""
    if target_name == "gpu":
        wanted.append(VLLM)
        cpu = {_name(p): p for p in requirements(TARGETS["cpu"])}
        constraints = "\n".join(_exact_torch([cpu[name] for name in TRAINING_STACK])) + "\n"
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="pai-distil-constraints-") as held_file:
        held_file.write(constraints)
        held_file.flush()
        argv = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed", "--report", "-",
                *wanted, *(["-c", held_file.name] if constraints else []), *pip_args]
        log("resolving with pip (about a minute) ...")
        proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"pip could not resolve the {target_name} image requirements: {dockercli.last_line(proc.stderr)}")
    report = json.loads(proc.stdout)
    versions = [(i["metadata"]["name"], i["metadata"]["version"]) for i in report["install"]]
    # the CPU lock names torch's CPU build without its local label (the wheelhouse has that build)
    pins = [(n, v.split("+", 1)[0] if target_name == "cpu" else v) for n, v in versions]
    lines = [f"{name}=={version}" for name, version in pins if _name(name) != "pai-distil"]
    what, contents, flag = LOCKS[target_name]
    path = IMAGES_DIR / tgt.requirements
    contents = "\n".join(textwrap.wrap(contents[0].upper() + contents[1:] + ".", 96, initial_indent="# ",
                                         subsequent_indent="# "))
    path.write_text(LOCK_HEADER.format(what=what, contents=contents, flag=flag)
                    + "\n".join(sorted(lines, key=str.lower)) + "\n")
    log(f"wrote {len(lines)} pins to {path}")
    return path


def wheelhouse(dest: str | Path, target_name: str = "cpu", pip_args: tuple[str, ...] = (), log=print) -> Path:
    """Every pinned package as a wheel in `dest`, made with this machine's pip (and its index settings).

    sdists (DeepSpeed, some Alibaba Cloud SDKs) are built into wheels here, so the image build
    needs neither network nor compilers.
    """
    tgt = target(target_name)
    if tgt.layer is not None:
        if not tgt.on_target:
            raise UserError(f"the {tgt.name} image installs no packages: it needs no wheelhouse")
        tgt = target(tgt.on_target)
    if sys.version_info[:2] != (3, 11) or sys.platform != "linux" or os.uname().machine != "x86_64":
        raise UserError("a wheelhouse is made for the image's Python: run this with Python 3.11 on Linux x86_64 "
                        f"(this is Python {sys.version_info[0]}.{sys.version_info[1]} on {sys.platform})")
    dest = Path(dest).expanduser().resolve()
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="pai-distil-req-") as req:
        pins = _exact_torch(requirements(tgt)) if tgt.name == "gpu" else requirements(tgt)
        req.write("\n".join(pins) + "\n")
        req.flush()
        log(f"pip wheel → {dest} ...")
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest),
                               "-r", req.name, *pip_args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"pip wheel failed: {dockercli.last_line(proc.stderr)}")
    missing = _missing_wheels(dest, requirements(tgt))
    if missing:
        raise UserError(f"the wheelhouse {dest} lacks {', '.join(missing)}; check pip's index settings")
    log(f"wheelhouse ready: {len(list(dest.glob('*.whl')))} wheels in {dest}")
    return dest


def _missing_wheels(directory: Path, pins: list[str]) -> list[str]:
    have = {(_name(w.name.split("-")[0]), w.name.split("-")[1].split("+")[0]) for w in directory.glob("*.whl")}
    return [p for p in pins if (_name(p), p.split("==", 1)[1]) not in have]


# -- content hash and build ----------------------------------------------------------------------


@dataclass
class BuildPlan:
    """Everything one `docker build` needs: the context folder's files, the build args, the tag."""

    target: Target
    base: str
    tag: str
    content_hash: str
    build_args: dict[str, str]
    network: str
    files: dict[str, Path | bytes]  # path in the context -> source file, or the bytes to write


def _source_files() -> dict[str, Path]:
    """The code an image holds: in a git checkout, the files git tracks under SOURCES (never a stray
    file of the working tree: notes, scratch scripts, secrets); in an installed package, every file."""
    tracked = _tracked(SOURCES)
    candidates = tracked if tracked is not None else [p for top in SOURCES for p in (ROOT / top).rglob("*")]
    out = {}
    for p in sorted(candidates):
        rel = p.relative_to(ROOT)
        if p.is_file() and "__pycache__" not in rel.parts and not p.name.endswith((".pyc", ".pyo")) \
                and not any(part.startswith(".") or part.endswith(".egg-info") for part in rel.parts):
            out[f"src/{rel.as_posix()}"] = p
    return out


def _tracked(tops: tuple[str, ...]) -> list[Path] | None:
    """The files git tracks under `tops` of ROOT, or None where ROOT is no checkout (or git is missing)."""
    if not (ROOT / ".git").exists():
        return None
    try:
        listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--", *tops], capture_output=True,
                                check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [ROOT / name for name in listed.decode("utf-8", "surrogateescape").split("\0") if name]


def plan(target_name: str = "cpu", *, base: str | None = None, wheelhouse_dir: str | Path | None = None,
         pip_cert: str | Path | None = None) -> BuildPlan:
    """The build of an image, without building: its context, args and content-hash tag."""
    tgt = target(target_name)
    if tgt.layer is not None:
        return _layer_plan(tgt, base, wheelhouse_dir, pip_cert)
    base = base or tgt.default_base
    files: dict[str, Path | bytes] = {
        "Dockerfile": IMAGES_DIR / tgt.dockerfile,
        "requirements.txt": ("\n".join(install_lines(tgt)) + "\n").encode(),
        "src/pyproject.toml": ROOT / "pyproject.toml",
        # pyproject names a readme; a stub keeps README edits from rebuilding the image
        "src/README.md": b"pai-distil: the job code of the pai-distil images.\n",
        **_source_files(),
    }
    digest = hashlib.sha256()
    for name in sorted(files):
        body = files[name] if isinstance(files[name], bytes) else files[name].read_bytes()
        digest.update(f"{name}\0{len(body)}\0".encode() + body)
    # the base by its content where this engine has it, else by its name (a registry image)
    digest.update(f"base\0{dockercli.image_id(base) or base}".encode())
    content_hash = digest.hexdigest()
    files["pip-cert.pem"] = Path(pip_cert).expanduser() if pip_cert else b""
    if pip_cert and not Path(pip_cert).expanduser().is_file():
        raise UserError(f"--pip-cert {pip_cert!r} is not a file; give the CA bundle pip should trust")
    if wheelhouse_dir is not None:
        wh = Path(wheelhouse_dir).expanduser()
        if not wh.is_dir():
            raise UserError(f"wheelhouse {str(wh)!r} is not a folder; make one with `pai-distil images wheelhouse DIR`")
        missing = _missing_wheels(wh, requirements(tgt))
        if missing:
            raise UserError(f"wheelhouse {wh} lacks {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
                            f"refill it with `pai-distil images wheelhouse {wh}`")
        for w in wh.glob("*.whl"):
            files[f"wheels/{w.name}"] = w
        pip_opts, network = "--no-index --find-links /build/wheels", "none"
    else:
        files["wheels/.keep"] = b""
        pip_opts, network = ("--extra-index-url https://download.pytorch.org/whl/cpu" if tgt.name == "cpu" else ""), "host"
    return BuildPlan(tgt, base, f"{tgt.repository}:{content_hash[:16]}", content_hash,
                     {"BASE": base, "PIP_OPTS": pip_opts}, network, files)


def _layer_plan(tgt: Target, base: str | None, wheelhouse_dir, pip_cert) -> BuildPlan:
    """A thin image on a base: tagged by its Dockerfile, its files and the base's content."""
    base = base or (plan(tgt.on_target, wheelhouse_dir=wheelhouse_dir, pip_cert=pip_cert).tag if tgt.on_target
                    else tgt.default_base)
    files: dict[str, Path | bytes] = {"Dockerfile": IMAGES_DIR / tgt.dockerfile,
                                      **{name: IMAGES_DIR / name for name in tgt.layer}}
    digest = hashlib.sha256()
    for name in sorted(files):
        body = files[name].read_bytes()
        digest.update(f"{name}\0{len(body)}\0".encode() + body)
    digest.update(f"base\0{dockercli.image_id(base) or base}".encode())
    content_hash = digest.hexdigest()
    return BuildPlan(tgt, base, f"{tgt.repository}:{content_hash[:16]}", content_hash, {"BASE": base}, "none", files)


def write_context(p: BuildPlan, directory: Path) -> None:
    for name, src in p.files.items():
        dest = directory / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, bytes):
            dest.write_bytes(src)
            continue
        try:
            os.link(src, dest)  # wheels are large: link, don't copy
        except OSError:
            shutil.copy2(src, dest)


def build(target_name: str = "cpu", *, base: str | None = None, wheelhouse_dir: str | Path | None = None,
          pip_cert: str | Path | None = None, push: str | None = None, force: bool = False,
          log=print, quiet: bool = False) -> str:
    """Build the image unless its content-hash tag exists; returns the tag (or the pushed reference)."""
    dockercli.require_engine()
    p = plan(target_name, base=base, wheelhouse_dir=wheelhouse_dir, pip_cert=pip_cert)
    if p.target.on_target and base is None and not dockercli.image_id(p.base):
        log(f"{p.base} is not built yet: building it first")
        built = build(p.target.on_target, wheelhouse_dir=wheelhouse_dir, pip_cert=pip_cert, log=log, quiet=quiet)
        p = plan(target_name, base=built)
    if p.target.name == "cpu" and p.base == BASE_TAG and not dockercli.image_id(BASE_TAG):
        raise UserError(f"base image {BASE_TAG} does not exist; make it with `pai-distil images bootstrap-base` "
                        "or pass --base IMAGE (Python 3.11 with venv)")
    if not force and dockercli.image_id(p.tag):
        log(f"{p.tag} is up to date (nothing that goes into it changed)")
    else:
        t0 = time.monotonic()
        log(f"building {p.tag} from {p.base} (network: {p.network}) ...")
        with tempfile.TemporaryDirectory(prefix="pai-distil-build-") as ctx:
            write_context(p, Path(ctx))
            argv = ["build", "--network", p.network, "--tag", p.tag, "--label", f"pai-distil.content-hash={p.content_hash}",
                    *(x for k, v in p.build_args.items() for x in ("--build-arg", f"{k}={v}")), ctx]
            proc = dockercli.docker(*argv, check=False, timeout=None, capture_output=quiet)
        if proc.returncode != 0:
            detail = build_failure(proc.stdout) if quiet else "see the build output above"
            raise UserError(f"docker build of {p.tag} failed: {detail}")
        log(f"built {p.tag} in {time.monotonic() - t0:.0f} s")
    if push:
        remote = f"{push.rstrip('/')}/{p.tag}"
        dockercli.docker("tag", p.tag, remote)
        log(f"pushing {remote} ...")
        proc = dockercli.docker("push", remote, check=False, timeout=None, capture_output=quiet)
        if proc.returncode != 0:
            raise UserError(f"docker push {remote} failed: log in with `docker login {push.split('/')[0]}` and retry")
        return remote
    return p.tag


def build_failure(output: str) -> str:
    """The line of a failed build's output that says why: the pins pip found in conflict (those whose
    requirement excludes a pinned version), the smoke check's verdict, else the last line."""
    lines = [line.strip() for line in (output or "").splitlines()]
    if "The conflict is caused by:" in lines:
        start = lines.index("The conflict is caused by:") + 1
        causes = list(itertools.takewhile(bool, lines[start:]))
        return "pins that do not fit together: " + _conflict(causes)
    for line in reversed(lines):
        if line.startswith(("pai-distil smoke check failed:", "ERROR:")):
            return line
    return dockercli.last_line(output)


def _conflict(causes: list[str]) -> str:
    """pip's causes ("The user requested torch==2.13.0", "x 1.0 depends on torch>=2.14"), reduced to the
    requirements that exclude what the lock pins."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    pinned = dict(re.findall(r"^The user requested ([A-Za-z0-9_.\-]+)==(\S+)$", "\n".join(causes), re.M))
    misfits = []
    for cause in causes:
        m = re.match(r"^(\S+ \S+) depends on ([A-Za-z0-9_.\-]+)\s*([^;]*)", cause)
        if not m or m.group(2) not in pinned:
            continue
        try:
            fits = SpecifierSet(m.group(3).strip()).contains(pinned[m.group(2)], prereleases=True)
        except InvalidSpecifier:
            continue
        if not fits:
            misfits.append(f"{m.group(1)} depends on {m.group(2)}{m.group(3).strip()}, but the lock pins "
                           f"{m.group(2)}=={pinned[m.group(2)]}")
    return "; ".join(misfits) or "; ".join(causes[:4])


def default_image() -> str:
    """The image of `--backend local`: $PAI_DISTIL_IMAGE, else the CPU image of this source tree."""
    override = os.environ.get(IMAGE_ENV)
    if override:
        return override
    try:
        tag = plan("cpu").tag
    except UserError as e:
        raise UserError(f"{e.message}; or set {IMAGE_ENV} to a job image") from None
    if not dockercli.image_id(tag):
        raise UserError(f"the job image {tag} is not built for this version of the code; run "
                        f"`pai-distil images build --wheelhouse DIR` (see `pai-distil images --help`) or set {IMAGE_ENV}")
    return tag
