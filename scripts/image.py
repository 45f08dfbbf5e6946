"""Builds the astro-janitor image on this machine and runs it the way the chart runs it.

    python scripts/image.py build     # `make image`: build, then write build/image.json
    python scripts/image.py run [--entrypoint CMD] [ARG ...]   # the last build, as UID 10001
    python scripts/image.py engine    # docker or buildah; exit 1 naming why neither can run

Engine: Docker when `docker info` answers, else buildah with chroot isolation (installed with
apt-get when missing; needs root). Base (the Dockerfile's one knob, PYTHON_IMAGE): the
environment variable PYTHON_IMAGE when set, else python:3.11-slim-bookworm when it is here or
can be pulled, else a Debian bookworm base made with debootstrap from this host's apt mirrors,
kept as a tarball under ~/.cache/astro-janitor and imported as astro-janitor-base:bookworm.

pip inside the build reaches the package index the way this host's pip does: the host's
index, proxy and CA settings (`pip config list`, PIP_* variables) go in as build secrets, never
as arguments or files of the image. The downloaded wheels stay in a cache mount between builds.

Running without a Docker engine: `buildah from` + `buildah mount` give the image's root; in new
mount and PID namespaces it is bound read-only (the chart's readOnlyRootFilesystem), with
/proc, a minimal /dev and a tmpfs /tmp (the chart's emptyDir), then chroot and the image's own
setpriv switch to UID/GID 10001 with no capabilities and no_new_privs
(runAsUser/runAsGroup 10001, capabilities drop ALL, allowPrivilegeEscalation false).
`buildah run` is not used: it has no read-only root. The network is the host's, as with
`docker run --network host`. Both runners forward the caller's JANITOR_* variables.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
FACTS = BUILD / "image.json"
PIP_LIST = BUILD / "image-pip-list.txt"
NAME = "astro-janitor"

OFFICIAL_BASE = "docker.io/library/python:3.11-slim-bookworm"
DEBIAN_BASE = f"localhost/{NAME}-base:bookworm"
SUITE = "bookworm"
# python3-venv for the build stage; ca-certificates as in the official image (libpq and
# Python's ssl module read the system bundle).
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
BASE_ENV = ("LANG=C.UTF-8", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
# debian:bookworm-slim's dpkg filter (docs, man pages and translations are not installed),
# so the Debian base is the same kind of slim as the official one.
SLIM_DPKG_FILTER = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""

# chart/values.yaml: podSecurityContext runAsUser/runAsGroup, the /tmp emptyDir's sizeLimit.
RUN_AS = "10001:10001"
TMP_SIZE = "64m"
DEVICES = ("null", "zero", "full", "random", "urandom")

# Bounds for every step: a cold build (debootstrap, pip downloads) takes about two minutes.
PROBE_TIMEOUT_S = 30
PULL_TIMEOUT_S = 300
APT_TIMEOUT_S = 900
BUILD_TIMEOUT_S = 1800
RUN_TIMEOUT_S = 900
# Dangling images of this project (a superseded build, its cached intermediate steps: the
# Dockerfile labels them all with the title) older than this are removed before each build;
# younger ones may belong to a build of another checkout running now.
PRUNE_AGE = "24h"
PRUNE_FILTERS = (
    "dangling=true",
    f"until={PRUNE_AGE}",
    f"label=org.opencontainers.image.title={NAME}",
)
PRUNE_ROUNDS = 20

# pip settings that say how to reach an index; local paths (find-links, constraint, file://
# indexes) do not exist inside the build and stay out.
PIP_NETWORK_KEYS = ("index-url", "extra-index-url", "trusted-host", "proxy", "timeout", "retries")
PIP_SECTIONS = {"global": 0, "install": 1, ":env:": 2}  # later wins, as in pip
PIP_CONFIG_LINE = re.compile(r"(?P<section>[^.]+)\.(?P<key>[a-z-]+)=(?P<value>.+)")
REMOTE_URL = re.compile(r"https?://\S+")
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


class NoEngineError(RuntimeError):
    """Neither Docker nor buildah can build and run the image on this machine."""


@dataclass(frozen=True)
class Facts:
    """What `build` made, written to build/image.json for `run`, the tests and the README."""

    engine: str
    image: str
    tag: str
    base: str
    size_bytes: int
    user: str
    entrypoint: list[str]
    cmd: list[str]
    build_seconds: float


def say(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


def call(
    command: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    quiet: bool = False,
) -> str:
    """Runs ``command`` and returns its stdout; fails naming it (with its stderr when
    ``quiet``, else the stderr went to the terminal already)."""
    result = subprocess.run(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if quiet else None,
        text=True,
        timeout=timeout,
        env=None if env is None else dict(env),
        check=False,
    )
    if result.returncode != 0:
        detail = (result.stderr or "").strip()[-3000:]
        raise RuntimeError(f"{shlex.join(command)} exited {result.returncode}\n{detail}")
    return result.stdout


def succeeds(command: Sequence[str], timeout: float = PROBE_TIMEOUT_S) -> bool:
    try:
        return (
            subprocess.run(command, capture_output=True, timeout=timeout, check=False).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


# --- engine ----------------------------------------------------------------------------


def engine() -> str:
    if shutil.which("docker") and succeeds(["docker", "info"]):
        return "docker"
    if os.geteuid() != 0:
        raise NoEngineError(
            "no Docker engine answers `docker info`, and buildah with chroot isolation "
            "(and the chroot runner) needs root"
        )
    if not (shutil.which("buildah") or shutil.which("apt-get")):
        raise NoEngineError(
            "no Docker engine answers `docker info`, and neither buildah nor apt-get to "
            "install it is here"
        )
    return "buildah"


def ensure_commands(*commands: str) -> None:
    """Installs the Debian packages of the same names when their commands are missing."""
    missing = [c for c in commands if shutil.which(c) is None]
    if not missing:
        return
    say(f"installing Debian packages: {' '.join(missing)}")
    apt = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    call(["apt-get", "update", "-qq"], timeout=APT_TIMEOUT_S, env=apt, quiet=True)
    call(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        timeout=APT_TIMEOUT_S,
        env=apt,
        quiet=True,
    )


def present(tool: str, image: str) -> bool:
    if tool == "docker":
        return succeeds(["docker", "image", "inspect", image])
    return succeeds(["buildah", "inspect", "--type", "image", image])


# --- the base image --------------------------------------------------------------------


def base_image(tool: str) -> str:
    chosen = os.environ.get("PYTHON_IMAGE", "").strip()
    if chosen:
        say(f"base {chosen} (PYTHON_IMAGE)")
        return chosen
    if present(tool, OFFICIAL_BASE):
        return OFFICIAL_BASE
    try:
        call([tool, "pull", "--quiet", OFFICIAL_BASE], timeout=PULL_TIMEOUT_S, quiet=True)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        reason = str(error).strip().splitlines()[-1][:300]
        say(f"{OFFICIAL_BASE} cannot be pulled ({reason}): using {DEBIAN_BASE}")
        return debian_base(tool)
    return OFFICIAL_BASE


def cache_dir() -> Path:
    home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(home) / NAME


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """One checkout at a time makes the base; the others wait and then find it made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def debian_base(tool: str) -> str:
    cache = cache_dir()
    tarball = cache / f"debian-{SUITE}-python3.tar"
    with locked(cache / "base.lock"):
        if present(tool, DEBIAN_BASE):
            return DEBIAN_BASE
        if not tarball.exists():
            make_base_tarball(tarball)
        say(f"importing {tarball} as {DEBIAN_BASE}")
        if tool == "docker":
            changes = [f"--change=ENV {e}" for e in BASE_ENV] + ['--change=CMD ["python3"]']
            call(["docker", "import", *changes, str(tarball), DEBIAN_BASE], timeout=600)
        else:
            container = call(["buildah", "from", "scratch"], timeout=60).strip()
            call(["buildah", "add", "--quiet", container, str(tarball), "/"], timeout=600)
            env = [arg for e in BASE_ENV for arg in ("--env", e)]
            call(["buildah", "config", *env, "--cmd", "python3", container], timeout=60)
            call(["buildah", "commit", "--quiet", "--rm", container, DEBIAN_BASE], timeout=600)
    return DEBIAN_BASE


def apt_sites() -> dict[str, str]:
    """This host's apt mirror for each Debian suite it uses, e.g. bookworm-security."""
    fields = "$(LABEL)|$(RELEASE)|$(SITE)"
    listing = call(
        ["apt-get", "indextargets", "--format", fields, "Identifier: Packages"], timeout=60
    )
    sites: dict[str, str] = {}
    for line in listing.splitlines():
        label, release, site = [*line.split("|"), "", ""][:3]
        if label in ("Debian", "Debian-Security") and site:
            sites.setdefault(release, site)
            sites.setdefault(label, site)  # any release's mirror, for a host on another one
    return sites


def apt_proxy_env() -> dict[str, str]:
    """apt's own proxy setting, for debootstrap and apt in the new root."""
    shell = call(["apt-config", "shell", "PROXY", "Acquire::http::Proxy"], timeout=60)
    match = re.fullmatch(r"PROXY='(?P<url>[^']+)'\s*", shell)
    return {"http_proxy": match["url"]} if match else {}


def make_base_tarball(tarball: Path) -> None:
    """debootstrap minbase + python3, upgraded from the suite's updates and security, slimmed."""
    ensure_commands("debootstrap")
    sites = apt_sites()
    main = sites.get(SUITE) or sites.get("Debian")
    security = sites.get(f"{SUITE}-security") or sites.get("Debian-Security")
    env = {**os.environ, **apt_proxy_env(), "DEBIAN_FRONTEND": "noninteractive"}
    started = time.monotonic()
    tarball.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="base-", dir=tarball.parent))
    root = work / "root"
    try:
        say(f"debootstrap {SUITE} from {main or 'the default mirror of debootstrap'}")
        mirror = [main] if main else []
        command = ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", SUITE]
        call([*command, str(root), *mirror], timeout=APT_TIMEOUT_S, env=env, quiet=True)
        sources = [f"deb {main} {SUITE} main", f"deb {main} {SUITE}-updates main"] if main else []
        if security:
            sources.append(f"deb {security} {SUITE}-security main")
        else:
            say(f"apt here knows no {SUITE}-security mirror: the base gets no security updates")
        if sources:
            (root / "etc/apt/sources.list").write_text("\n".join(sources) + "\n")
        (root / "etc/dpkg/dpkg.cfg.d/slim").write_text(SLIM_DPKG_FILTER)
        shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
        for step in (["update", "-qq"], ["-y", "-qq", "upgrade"], ["clean"]):
            apt_get = ["chroot", str(root), "apt-get", *step]
            call(apt_get, timeout=APT_TIMEOUT_S, env=env, quiet=True)
        slim(root)
        tar = ["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(work / "base.tar")]
        call([*tar, "."], timeout=600)
        (work / "base.tar").replace(tarball)
    finally:
        unmount_under(root)
        shutil.rmtree(work, ignore_errors=True)
    say(f"made {tarball} in {time.monotonic() - started:.0f} s")


def slim(root: Path) -> None:
    """Removes what the slim dpkg filter would not have installed, the apt lists, and the
    build host's resolver and name."""
    share = root / "usr/share"
    for path in sorted((share / "doc").rglob("*"), reverse=True):
        if path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.rmdir()  # only when empty: the copyright files stay
        elif path.name != "copyright":
            path.unlink()
    for name in ("man", "groff", "info", "lintian", "linda"):
        shutil.rmtree(share / name, ignore_errors=True)
    for path in (share / "locale").glob("*"):
        if path.is_symlink() or not path.is_dir():
            if path.name != "locale.alias":
                path.unlink()
        else:
            shutil.rmtree(path)
    for path in (root / "var/lib/apt/lists").glob("*"):
        if path.is_file():
            path.unlink()
    (root / "etc/resolv.conf").write_text("")
    (root / "etc/hostname").unlink(missing_ok=True)


def unmount_under(root: Path) -> None:
    """Anything debootstrap left mounted in the new root (/proc, /sys, a bind of /dev after a
    failure) is unmounted before the tree is removed, or removing it would reach the host's."""
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False, timeout=60)


# --- pip settings as build secrets -----------------------------------------------------


def host_pip_settings() -> dict[str, str]:
    """pip's effective settings on this host: its config files and PIP_* variables."""
    try:
        listing = call([sys.executable, "-m", "pip", "config", "list"], timeout=60, quiet=True)
    except (RuntimeError, subprocess.TimeoutExpired):
        return {}
    ranked: dict[str, tuple[int, str]] = {}
    for line in listing.splitlines():
        match = PIP_CONFIG_LINE.fullmatch(line.strip())
        if match is None or match["section"] not in PIP_SECTIONS:
            continue
        rank = PIP_SECTIONS[match["section"]]
        key = "timeout" if match["key"] == "default-timeout" else match["key"]
        if rank >= ranked.get(key, (-1, ""))[0]:
            ranked[key] = (rank, str(ast.literal_eval(match["value"])))
    return {key: value for key, (_, value) in ranked.items()}


def write_pip_secrets(directory: Path) -> None:
    """pip.conf with the host's network settings, and the CA bundle the host's pip trusts
    (a TLS-inspecting proxy's CA is in it), as the two secrets the Dockerfile mounts."""
    settings = host_pip_settings()
    lines = ["[global]"]
    left_out = sorted(set(settings) - set(PIP_NETWORK_KEYS) - {"cert"})
    for key in PIP_NETWORK_KEYS:
        value = settings.get(key, "")
        if key.endswith("index-url"):
            remote = " ".join(REMOTE_URL.findall(value))
            left_out += [f"{key} {url}" for url in value.split() if url not in remote.split()]
            value = remote
        if value:
            lines.append(f"{key} = {value}")
    cafile = settings.get("cert") or ssl.get_default_verify_paths().cafile
    if cafile and Path(cafile).is_file():
        shutil.copyfile(cafile, directory / "pip-cert.pem")
        lines.append("cert = /run/secrets/pip-cert.pem")
    else:
        (directory / "pip-cert.pem").write_text("")
    (directory / "pip.conf").write_text("\n".join(lines) + "\n")
    keys = [line.split(" = ")[0] for line in lines[1:]]
    say(f"pip settings passed to the build: {', '.join(keys) or 'none'}")
    if left_out:
        say(f"pip settings of this host left out of the build: {', '.join(left_out)}")


# --- build -----------------------------------------------------------------------------


def project_version() -> str:
    """``janitor.__version__``, the one source pyproject.toml reads too, without importing
    the package (the build may run before it is installed)."""
    tree = ast.parse((ROOT / "janitor" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [
            "__version__"
        ]:
            version = ast.literal_eval(node.value)
            if isinstance(version, str):
                return version
    raise SystemExit("janitor/__init__.py sets no __version__ string")


def revision() -> str:
    """The commit the image is built from, marked dirty when what it copies is changed."""
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if head.returncode != 0:
        return "unknown"
    copied = ["Dockerfile", "pyproject.toml", "README.md", "janitor"]
    changed = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", *copied],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout.strip()
    return head.stdout.strip() + ("-dirty" if changed else "")


def prune(tool: str) -> None:
    if tool == "docker":
        filters = [f"--filter={f}" for f in PRUNE_FILTERS if not f.startswith("dangling")]
        call(["docker", "image", "prune", "--force", *filters], timeout=600)
        return
    # Removing a superseded image makes its parent layer dangling in turn: a few rounds.
    for _ in range(PRUNE_ROUNDS):
        filters = [f"--filter={f}" for f in PRUNE_FILTERS]
        listing = call(
            ["buildah", "images", "--all", "--quiet", "--no-trunc", *filters], timeout=120
        )
        removed = [i for i in listing.split() if succeeds(["buildah", "rmi", i], timeout=120)]
        if not removed:
            return


def build() -> Facts:
    tool = engine()
    if tool == "buildah":
        ensure_commands("buildah")
    prune(tool)
    base = base_image(tool)
    version = project_version()
    tag = f"{NAME}:{version}"
    BUILD.mkdir(exist_ok=True)
    iidfile = BUILD / "image.id"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pip-secrets-") as secrets:
        write_pip_secrets(Path(secrets))
        args = [
            "--network=host",
            f"--build-arg=PYTHON_IMAGE={base}",
            f"--build-arg=VERSION={version}",
            f"--build-arg=REVISION={revision()}",
            f"--secret=id=pip.conf,src={secrets}/pip.conf",
            f"--secret=id=pip-cert.pem,src={secrets}/pip-cert.pem",
            f"--iidfile={iidfile}",
            f"--tag={tag}",
            str(ROOT),
        ]
        if tool == "docker":
            # Docker passes no proxy variables to RUN steps unless asked; buildah does.
            proxies = [f"--build-arg={v}" for v in PROXY_VARIABLES if os.environ.get(v)]
            command = ["docker", "build", *proxies, *args]
            env = {**os.environ, "DOCKER_BUILDKIT": "1"}
        else:
            command = ["buildah", "bud", "--layers", "--force-rm", "--isolation=chroot", *args]
            env = dict(os.environ)
        say(shlex.join(command))
        result = subprocess.run(command, env=env, timeout=BUILD_TIMEOUT_S, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the image build failed (exit {result.returncode})")
    seconds = time.monotonic() - started
    image = iidfile.read_text().strip()
    config, size = inspect(tool, image)
    facts = Facts(
        engine=tool,
        image=image,
        tag=tag,
        base=base,
        size_bytes=size,
        user=config.get("User", ""),
        entrypoint=config.get("Entrypoint") or [],
        cmd=config.get("Cmd") or [],
        build_seconds=round(seconds, 1),
    )
    FACTS.write_text(json.dumps(asdict(facts), indent=2) + "\n")
    pip_list = run(facts, ["/opt/janitor/pip-list.txt"], entrypoint="cat", capture=True)
    if pip_list.returncode != 0:
        raise RuntimeError(f"reading the image's pip list failed: {pip_list.stderr.strip()}")
    PIP_LIST.write_text(pip_list.stdout)
    short = image.removeprefix("sha256:")[:12]
    say(
        f"built {tag} ({short}) on {base} with {tool} in {seconds:.1f} s: "
        f"{size / 1e6:.0f} MB, user {facts.user}, {facts.entrypoint + facts.cmd}; "
        f"{FACTS.relative_to(ROOT)}, {PIP_LIST.relative_to(ROOT)}"
    )
    return facts


def inspect(tool: str, image: str) -> tuple[dict[str, Any], int]:
    """The image's runtime config (User, Env, Entrypoint, Cmd, WorkingDir) and size in bytes."""
    if tool == "docker":
        (details,) = json.loads(call(["docker", "image", "inspect", image], timeout=60))
        return details["Config"], int(details["Size"])
    details = json.loads(call(["buildah", "inspect", "--type", "image", image], timeout=60))
    # Local storage keeps layers uncompressed: the manifest's sizes are what `docker image
    # inspect` calls Size.
    layers = json.loads(details["Manifest"])["layers"]
    return details["OCIv1"]["config"], sum(int(layer["size"]) for layer in layers)


# --- run -------------------------------------------------------------------------------


def load_facts() -> Facts:
    if not FACTS.exists():
        raise RuntimeError(f"no {FACTS.relative_to(ROOT)}: build the image first (make image)")
    return Facts(**json.loads(FACTS.read_text()))


def run(
    facts: Facts, args: Sequence[str], entrypoint: str | None = None, *, capture: bool = False
) -> subprocess.CompletedProcess[str]:
    """Runs the image like ``docker run``, as the chart runs it; output captured or passed on."""
    forwarded = {k: v for k, v in os.environ.items() if k.startswith("JANITOR_")}
    if facts.engine == "docker":
        command = ["docker", "run", "--rm", "--read-only", f"--user={RUN_AS}", "--cap-drop=ALL"]
        command += ["--security-opt=no-new-privileges", "--network=host"]
        command += [f"--tmpfs=/tmp:rw,nosuid,nodev,size={TMP_SIZE}"]
        command += [f"--env={name}" for name in sorted(forwarded)]
        command += [f"--entrypoint={entrypoint}"] if entrypoint else []
        return subprocess.run(
            [*command, facts.image, *args],
            capture_output=capture,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
    return run_chroot(facts, args, entrypoint, forwarded, capture=capture)


def run_chroot(
    facts: Facts,
    args: Sequence[str],
    entrypoint: str | None,
    forwarded: Mapping[str, str],
    *,
    capture: bool,
) -> subprocess.CompletedProcess[str]:
    config, _ = inspect("buildah", facts.image)
    # `docker run` semantics: --entrypoint resets the image's Cmd; arguments replace it.
    command = [entrypoint] if entrypoint else list(config.get("Entrypoint") or [])
    command += list(args) or ([] if entrypoint else list(config.get("Cmd") or []))
    container = call(["buildah", "from", "--quiet", facts.image], timeout=120).strip()
    try:
        root = call(["buildah", "mount", container], timeout=120).strip()
        env = dict(e.split("=", 1) for e in config.get("Env") or [])
        uid, gid = RUN_AS.split(":")
        env.setdefault("HOME", home_of(Path(root), uid))
        env.update(forwarded)
        inner = [
            tool("unshare"),
            f"--root={root}",
            f"--wd={config.get('WorkingDir') or '/'}",
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            "--no-new-privs",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
            *command,
        ]
        namespaces = [tool("unshare"), "--mount", "--pid", "--fork", "--kill-child"]
        setup = [tool("sh"), "-euc", mount_script(root), "sh", *inner]
        return subprocess.run(
            [*namespaces, *setup],
            env=env,
            capture_output=capture,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
    finally:
        succeeds(["buildah", "umount", container], timeout=120)
        succeeds(["buildah", "rm", container], timeout=120)


def tool(name: str) -> str:
    """A host command by absolute path: the environment passed on is the image's."""
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is needed to run the image without Docker")
    return found


def mount_script(root: str) -> str:
    """Run in the new mount namespace: the image's root read-only, as the kubelet mounts it."""
    r = shlex.quote(root)
    mount = shlex.quote(tool("mount"))
    ln = shlex.quote(tool("ln"))
    lines = [
        f"{mount} --bind {r} {r}",
        f"{mount} -o remount,bind,ro,nosuid,nodev {r}",
        f"{mount} -t proc -o nosuid,nodev,noexec proc {r}/proc",
        f"{mount} -t tmpfs -o nosuid,noexec,mode=755,size=1m tmpfs {r}/dev",
        # The container's own /tmp, a fresh tmpfs like the chart's emptyDir.
        f"{mount} -t tmpfs -o nosuid,nodev,mode=1777,size={TMP_SIZE} tmpfs {r}/tmp",  # noqa: S108
    ]
    for device in DEVICES:
        lines.append(f": > {r}/dev/{device}")
        lines.append(f"{mount} --bind /dev/{device} {r}/dev/{device}")
    for number, name in enumerate(("stdin", "stdout", "stderr")):
        lines.append(f"{ln} -s /proc/self/fd/{number} {r}/dev/{name}")
    lines.append(f"{ln} -s /proc/self/fd {r}/dev/fd")
    lines.append("unset PWD OLDPWD")  # the shell's own, not the image's
    lines.append('exec "$@"')
    return "\n".join(lines)


def home_of(root: Path, uid: str) -> str:
    """HOME as Docker and the kubelet set it: the user's passwd entry in the image, else /."""
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) >= 6 and fields[2] == uid:
            return fields[5]
    return "/"


# --- command line ----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="image.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build the image (make image)")
    commands.add_parser("engine", help="print the engine that builds and runs the image here")
    run_parser = commands.add_parser("run", help="run the last build as the chart runs it")
    run_parser.add_argument("--entrypoint", help="instead of the image's ENTRYPOINT")
    run_parser.add_argument("args", nargs=argparse.REMAINDER, help="instead of the image's CMD")
    options = parser.parse_args(argv)
    try:
        if options.command == "engine":
            print(engine())
            return 0
        if options.command == "build":
            build()
            return 0
        args = options.args[1:] if options.args[:1] == ["--"] else options.args
        return run(load_facts(), args, options.entrypoint).returncode
    except (NoEngineError, RuntimeError, subprocess.TimeoutExpired) as error:
        print(f"image: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
