"""Runs a rendered chart's pods as local processes: a small kubelet on loopback, for tests.

No cluster runs here, so the chart's pods are emulated from the rendered manifests:

- **Network.** Every pod gets its own loopback address (``127.a.b.N``; Linux routes all of
  ``127.0.0.0/8`` to ``lo``), so every pod keeps the ports the chart gives it, as pods on a
  cluster do. The DNS names of StatefulSet pods (``<pod>.<service>.<namespace>.svc.<domain>``)
  map to those addresses. What would resolve them is replaced: names in environment values
  and in the text files of a pod's ConfigMap volumes and of its emptyDirs once its init
  containers have written them are rewritten to the addresses; the image's
  ``redis-cli`` is wrapped so its ``-h <name>`` resolves, and its default host (the pod's
  own ``127.0.0.1``) is the pod's address. A server that listens on every address (Redis'
  ``bind * -::*``, the platform's ``0.0.0.0``) is told to listen on the pod's address only.
- **Filesystem.** Each volume is a directory under the pod's root: emptyDirs and persistent
  claims empty, ConfigMap and Secret volumes written from the rendered objects (``items``,
  modes). Each container sees its volumes at their ``mountPath``: paths in its command, its
  environment and the mounted config files are rewritten to the directories (longest mount
  first, so ``/tmp/metrics`` inside ``/tmp`` works). Any other path is the host's, where the
  image's read-only root filesystem would be; the working directory is an empty read-only one.
- **Containers.** ``env`` and ``envFrom`` are resolved as the kubelet does: Secrets and
  ConfigMaps (``secretKeyRef``, ``configMapKeyRef``, ``optional``), ``fieldRef`` (pod name,
  namespace, IP, labels…), service links when ``enableServiceLinks`` is on, and ``$(VAR)``
  expansion in values, commands and args. Commands run with the image's environment (from
  :class:`Image`) under that, through ``PATH``, so ``platform-tasks`` is the local venv's and
  ``redis-server`` the local binary. Init containers run to completion first. Not emulated:
  restarts (a container that exits stays down, so a crash shows), the security context (the
  processes run as the test's user) and resource limits.
- **Probes.** exec probes run their command with the container's environment (``$(VAR)`` of
  static values expanded, as the kubelet does); ``httpGet`` and ``tcpSocket`` probes connect to
  the pod's address. They are polled more often than ``periodSeconds``, to keep tests short.

Only processes started here are ever stopped, by the PID :class:`ManagedProcess` keeps.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import random
import re
import shlex
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from chart_tools import NAMESPACE, Manifest, Render

from platform_tasks.devstack.processes import ManagedProcess

CLUSTER_DOMAIN = "cluster.local"
_VALID_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class EmulationError(RuntimeError):
    """A pod could not be run as the manifests describe (what the kubelet would refuse)."""


# -- images ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """What a container image provides, as local files.

    ``programs`` are the executables the image has on its ``PATH`` (name -> local file);
    ``path`` are local directories searched after them (a venv's ``bin``). ``paths`` maps
    image directories to local ones (``/opt/venv`` -> the local venv) in the image's ``env``
    and in commands. ``redis_cli`` is the image's ``redis-cli``, wrapped per pod so that it
    resolves the cluster's names. ``listen_env`` names variables that tell a server which
    address to listen on, set to the pod's address (the image listens on every address, which
    in a pod is the pod's own network).
    """

    programs: Mapping[str, Path] = field(default_factory=dict)
    path: tuple[Path, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    paths: Mapping[str, Path] = field(default_factory=dict)
    workdir: str = "/"
    redis_cli: Path | None = None
    listen_env: tuple[str, ...] = ()


def dockerfile_stage(dockerfile: Path, stage: str, base_path: str) -> tuple[dict[str, str], str]:
    """The ``ENV`` (``$PATH`` starting as ``base_path``) and ``WORKDIR`` of one stage of a
    Dockerfile."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    env: dict[str, str] = {"PATH": base_path}
    workdir = "/"
    in_stage = False
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["FROM"]:
            in_stage = len(words) >= 4 and words[-2].upper() == "AS" and words[-1] == stage
        elif in_stage and words[:1] == ["ENV"]:
            for item in shlex.split(line.strip()[3:]):
                name, _, value = item.partition("=")
                env[name] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
        elif in_stage and words[:1] == ["WORKDIR"]:
            workdir = words[1]
    return env, workdir


# -- pods ------------------------------------------------------------------------------------


@dataclass
class PodPlan:
    """One pod the workload would create: its name, spec, labels and loopback address."""

    name: str
    owner: str  # Kind/name of what creates it
    spec: Manifest
    labels: dict[str, str]
    annotations: dict[str, str]
    ip: str = ""
    subdomain: str | None = None  # the StatefulSet's headless Service

    def container(self, name: str) -> Manifest:
        for container in [*self.spec.get("initContainers", []), *self.spec["containers"]]:
            if container["name"] == name:
                return container
        raise KeyError(f"pod {self.name} has no container {name}")


def plan_pods(render: Render, *, hooks: bool = False) -> list[PodPlan]:
    """The pods of ``render``'s workloads, in the order they would start.

    A StatefulSet gives its ``replicas`` pods ``<name>-<ordinal>``; a Deployment one pod
    (its HPA's minimum in the chart; more would share this host's name); a bare Pod itself.
    ``hooks`` picks the Helm hooks (``helm test``) instead of what ``helm install`` creates.
    """
    plans: list[PodPlan] = []
    for obj in render.hooks if hooks else render.installed:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind == "Pod":
            meta = obj["metadata"]
            plans.append(PodPlan(name, f"Pod/{name}", obj["spec"], dict(meta.get("labels", {})),
                                 dict(meta.get("annotations", {}))))
            continue
        if kind not in {"StatefulSet", "Deployment"}:
            continue
        template = obj["spec"]["template"]
        labels = dict(template["metadata"].get("labels", {}))
        annotations = dict(template["metadata"].get("annotations", {}))
        if kind == "StatefulSet":
            for ordinal in range(int(obj["spec"].get("replicas", 1))):
                pod = f"{name}-{ordinal}"
                plans.append(PodPlan(
                    pod, f"{kind}/{name}", template["spec"],
                    labels | {"statefulset.kubernetes.io/pod-name": pod}, annotations,
                    subdomain=obj["spec"]["serviceName"],
                ))
        else:
            plans.append(PodPlan(f"{name}-emulated", f"{kind}/{name}", template["spec"], labels,
                                 annotations))
    return plans


# -- the network -----------------------------------------------------------------------------


def loopback_subnet() -> str:
    """A random ``127.a.b`` prefix, so concurrent runs rarely share addresses."""
    rng = random.SystemRandom()
    return f"127.{rng.randint(64, 250)}.{rng.randint(1, 250)}"


def ports_free_on(addresses: Iterable[str], count: int) -> list[int]:
    """``count`` ports that nothing listens on at any of ``addresses`` (nor on a wildcard)."""
    addresses = list(addresses)
    chosen: list[int] = []
    with contextlib.ExitStack() as stack:
        for _ in range(50 * count):
            if len(chosen) == count:
                break
            probe = stack.enter_context(socket.socket())
            probe.bind((addresses[0], 0))
            port = int(probe.getsockname()[1])
            ok = True
            for address in addresses[1:]:
                with socket.socket() as other:
                    try:
                        other.bind((address, port))
                    except OSError:
                        ok = False
                        break
            if ok and port not in chosen:
                chosen.append(port)
    if len(chosen) < count:
        raise EmulationError(f"no {count} ports free on all of {addresses}")
    return chosen


@dataclass
class Network:
    """Pod addresses and the DNS names that resolve to them."""

    subnet: str
    domain: str = CLUSTER_DOMAIN
    namespace: str = NAMESPACE
    names: dict[str, str] = field(default_factory=dict)
    _next: int = 10

    def assign(self, pod: PodPlan) -> str:
        pod.ip = f"{self.subnet}.{self._next}"
        self._next += 1
        if pod.subdomain:
            base = f"{pod.name}.{pod.subdomain}"
            for suffix in ("", f".{self.namespace}", f".{self.namespace}.svc",
                           f".{self.namespace}.svc.{self.domain}"):
                self.names[base + suffix] = pod.ip
        return pod.ip

    def resolve_text(self, text: str) -> str:
        """Every known name in ``text`` replaced by its address (longest names first)."""
        for name in sorted(self.names, key=len, reverse=True):
            text = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", self.names[name], text)
        return text


_BIND = re.compile(r"^(\s*bind)\s+.*$", re.MULTILINE)


def listen_on_pod_address(text: str, ip: str) -> str:
    """Redis ``bind`` directives narrowed to the pod's address: in a pod, ``*`` is the pod's
    own network; here it would be every interface of the host."""
    return _BIND.sub(lambda m: f"{m.group(1)} {ip}", text)


def _redis_cli_wrapper(real: Path, pod_ip: str, names: Mapping[str, str]) -> str:
    cases = "\n".join(f"    {shlex.quote(name)}) echo {ip} ;;"
                      for name, ip in sorted(names.items()))
    return f"""#!/bin/sh
# redis-cli as run inside an emulated pod: cluster DNS names resolve to the pods' loopback
# addresses, and the default host (the pod's own 127.0.0.1) is this pod's address.
resolve() {{
  case "$1" in
{cases}
    localhost | 127.0.0.1) echo {pod_ip} ;;
    *) printf '%s\\n' "$1" ;;
  esac
}}
host_given=""
previous=""
for arg do
  shift
  if [ "$previous" = "-h" ]; then
    arg="$(resolve "$arg")"
    host_given=1
  fi
  set -- "$@" "$arg"
  previous="$arg"
done
[ -n "$host_given" ] || set -- -h {pod_ip} "$@"
exec {shlex.quote(str(real))} "$@"
"""


# -- the filesystem --------------------------------------------------------------------------


@dataclass(frozen=True)
class FileView:
    """Container paths (mount points, image directories) -> local directories."""

    mounts: tuple[tuple[str, Path], ...]

    @classmethod
    def of(cls, mounts: Mapping[str, Path]) -> FileView:
        ordered = sorted(mounts.items(), key=lambda item: len(item[0]), reverse=True)
        return cls(tuple((path.rstrip("/") or "/", local) for path, local in ordered))

    def local(self, path: str) -> str:
        """The local path of an absolute container path (unchanged if nothing is mounted)."""
        for mount, local in self.mounts:
            if path == mount or path.startswith(mount + "/"):
                return str(local) + path[len(mount):]
        return path

    def rewrite_text(self, text: str) -> str:
        """Container paths inside a file or value (``dir /data``) made local. Paths that are
        local already (a script wrote them from its environment) stay as they are."""
        locals_ = sorted({str(local) for _, local in self.mounts}, key=len, reverse=True)
        mounts = dict(self.mounts)
        pattern = re.compile(
            r"(?<![\w./-])(?:(?P<local>" + "|".join(map(re.escape, locals_)) + r")|(?P<mount>"
            + "|".join(re.escape(m) for m, _ in self.mounts) + r"))(?=[/\s\"':;,]|$)",
            re.MULTILINE,
        )
        return pattern.sub(
            lambda m: m.group(0) if m.group("local") else str(mounts[m.group("mount")]), text)


# -- objects and env -------------------------------------------------------------------------


def expand(text: str, lookup: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion: ``$$`` is ``$``, unknown references stay as written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "$" and i + 1 < len(text):
            following = text[i + 1]
            if following == "$":
                out.append("$")
                i += 2
                continue
            if following == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2:end]
                    out.append(lookup.get(name, f"$({name})"))
                    i = end + 1
                    continue
        out.append(char)
        i += 1
    return "".join(out)


class Objects:
    """The rendered Secrets, ConfigMaps and Services a kubelet would read, by name."""

    def __init__(self, objects: Iterable[Manifest]) -> None:
        self.secrets: dict[str, dict[str, bytes]] = {}
        self.config_maps: dict[str, dict[str, bytes]] = {}
        self.services: list[Manifest] = []
        for obj in objects:
            kind, name = obj["kind"], obj["metadata"]["name"]
            if kind == "Secret":
                data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
                data |= {k: v.encode() for k, v in (obj.get("stringData") or {}).items()}
                self.secrets[name] = data
            elif kind == "ConfigMap":
                data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
                data |= {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}
                self.config_maps[name] = data
            elif kind == "Service":
                self.services.append(obj)

    def source(self, kind: str, name: str, optional: bool) -> dict[str, bytes] | None:
        store = self.secrets if kind == "secret" else self.config_maps
        if name in store:
            return store[name]
        if optional:
            return None
        raise EmulationError(f"{kind} {name!r} does not exist (CreateContainerConfigError)")

    def key(self, kind: str, ref: Manifest) -> str | None:
        data = self.source(kind, ref["name"], bool(ref.get("optional")))
        if data is None:
            return None
        if ref["key"] not in data:
            if ref.get("optional"):
                return None
            raise EmulationError(f"{kind} {ref['name']!r} has no key {ref['key']!r}")
        return data[ref["key"]].decode()


def _field(pod: PodPlan, path: str) -> str:
    simple = {
        "metadata.name": pod.name,
        "metadata.namespace": NAMESPACE,
        "metadata.uid": f"uid-{pod.name}",
        "spec.nodeName": "emulated-node",
        "spec.serviceAccountName": pod.spec.get("serviceAccountName", "default"),
        "status.podIP": pod.ip,
        "status.podIPs": pod.ip,
        "status.hostIP": pod.ip,
        "status.hostIPs": pod.ip,
    }
    if path in simple:
        return simple[path]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        source = pod.labels if match.group(1) == "labels" else pod.annotations
        return source.get(match.group(2), "")
    raise EmulationError(f"fieldRef {path!r} is not one the kubelet supports")


def service_links(services: Iterable[Manifest]) -> dict[str, str]:
    """The ``<SERVICE>_SERVICE_HOST``/``_PORT…`` variables of ``enableServiceLinks``."""
    env: dict[str, str] = {}
    for number, service in enumerate(services, start=1):
        spec = service["spec"]
        if spec.get("clusterIP") == "None" or not spec.get("ports"):
            continue
        ip = f"10.96.0.{number}"  # never reached: only the names matter
        prefix = service["metadata"]["name"].upper().replace("-", "_")
        first = spec["ports"][0]
        env[f"{prefix}_SERVICE_HOST"] = ip
        env[f"{prefix}_SERVICE_PORT"] = str(first["port"])
        env[f"{prefix}_PORT"] = f"{first.get('protocol', 'TCP').lower()}://{ip}:{first['port']}"
        for port in spec["ports"]:
            proto = port.get("protocol", "TCP")
            if "name" in port:
                env[f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(
                    port["port"])
            base = f"{prefix}_PORT_{port['port']}_{proto}"
            env[base] = f"{proto.lower()}://{ip}:{port['port']}"
            env[f"{base}_PROTO"] = proto.lower()
            env[f"{base}_PORT"] = str(port["port"])
            env[f"{base}_ADDR"] = ip
    return env


def container_env(pod: PodPlan, container: Manifest,
                  objects: Objects) -> tuple[dict[str, str], frozenset[str]]:
    """The environment the kubelet gives ``container`` (not the image's): service links,
    ``envFrom``, then ``env`` with ``valueFrom`` resolved and ``$(VAR)`` expanded; and the
    names whose value came from a Secret."""
    env: dict[str, str] = {}
    secret_names: set[str] = set()
    if pod.spec.get("enableServiceLinks", True):
        env |= service_links(objects.services)
    for source in container.get("envFrom", []):
        kind = "secret" if "secretRef" in source else "configmap"
        ref = source.get("secretRef") or source["configMapRef"]
        data = objects.source(kind, ref["name"], bool(ref.get("optional")))
        for key, value in (data or {}).items():
            name = source.get("prefix", "") + key
            if _VALID_ENV_NAME.match(name):
                env[name] = value.decode()
                if kind == "secret":
                    secret_names.add(name)
    for entry in container.get("env", []):
        name = entry["name"]
        secret_names.discard(name)
        if "valueFrom" not in entry:
            env[name] = expand(entry.get("value", ""), env)
            continue
        source = entry["valueFrom"]
        value: str | None
        if "secretKeyRef" in source:
            value = objects.key("secret", source["secretKeyRef"])
            secret_names.add(name)
        elif "configMapKeyRef" in source:
            value = objects.key("configmap", source["configMapKeyRef"])
        elif "fieldRef" in source:
            value = _field(pod, source["fieldRef"]["fieldPath"])
        else:
            raise EmulationError(f"{pod.name}/{container['name']}: env {name}: "
                                 f"unsupported valueFrom {sorted(source)}")
        if value is not None:
            env[name] = value
    return env, frozenset(secret_names)


# -- running ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerRun:
    """How one container runs here: ``env`` in full, ``kube_env`` the part the kubelet sets
    (what ``$(VAR)`` sees), its file view and its local working directory."""

    env: dict[str, str]
    kube_env: dict[str, str]
    view: FileView
    workdir: Path


@dataclass
class ProbeResult:
    ok: bool
    output: str


class RunningPod:
    """One emulated pod: its volumes on disk, its containers' processes and their probes."""

    def __init__(self, cluster: Cluster, plan: PodPlan) -> None:
        self.cluster = cluster
        self.plan = plan
        self.root = cluster.root / "pods" / plan.name
        self.processes: dict[str, ManagedProcess] = {}
        self._volumes: dict[str, Path] = {}
        self._bin = self.root / "bin"

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def ip(self) -> str:
        return self.plan.ip

    def log_path(self, container: str) -> Path:
        return self.cluster.root / "logs" / f"{self.name}_{container}.log"

    def log_tail(self, container: str, lines: int = 40) -> str:
        path = self.log_path(container)
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # -- volumes --

    def _materialise(self) -> None:
        objects = self.cluster.objects
        claims = {c["metadata"]["name"] for c in self.cluster.claim_templates(self.plan)}
        volumes = [*self.plan.spec.get("volumes", []),
                   *({"name": name, "persistentVolumeClaim": {}} for name in sorted(claims))]
        for volume in volumes:
            directory = self.root / "volumes" / volume["name"]
            directory.mkdir(parents=True, exist_ok=True)
            self._volumes[volume["name"]] = directory
            if "configMap" in volume or "secret" in volume:
                kind = "secret" if "secret" in volume else "configmap"
                ref = volume.get("secret") or volume["configMap"]
                name = ref.get("secretName") or ref.get("name")
                data = objects.source(kind, name, bool(ref.get("optional"))) or {}
                mode = int(ref.get("defaultMode", 0o644))
                items = ref.get("items") or [{"key": k, "path": k} for k in sorted(data)]
                for item in items:
                    if item["key"] not in data:
                        raise EmulationError(f"{self.name}: volume {volume['name']}: {kind} "
                                             f"{name} has no key {item['key']!r}")
                    target = directory / item["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data[item["key"]])
                    target.chmod(int(item.get("mode", mode)))
            elif not ({"emptyDir", "persistentVolumeClaim"} & set(volume)):
                raise EmulationError(f"{self.name}: volume {volume['name']}: unsupported "
                                     f"source {sorted(set(volume) - {'name'})}")

    def _view(self, container: Manifest, image: Image) -> FileView:
        mounts: dict[str, Path] = {path: local for path, local in image.paths.items()}
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in self._volumes:
                raise EmulationError(f"{self.name}/{container['name']}: mount of unknown "
                                     f"volume {mount['name']!r}")
            mounts[mount["mountPath"]] = self._volumes[mount["name"]] / mount.get("subPath", "")
        return FileView.of(mounts)

    def _pod_view(self) -> FileView:
        mounts: dict[str, Path] = {}
        for container in [*self.plan.spec.get("initContainers", []),
                          *self.plan.spec["containers"]]:
            for mount in container.get("volumeMounts", []):
                local = self._volumes[mount["name"]] / mount.get("subPath", "")
                if mounts.setdefault(mount["mountPath"], local) != local:
                    raise EmulationError(f"{self.name}: {mount['mountPath']} mounts different "
                                         "volumes in different containers")
        return FileView.of(mounts)

    def _localise_files(self, kinds: set[str]) -> None:
        """Rewrite the pod's text files in volumes of ``kinds`` for this host: container
        paths, cluster names and listen addresses."""
        view = self._pod_view()
        for volume in self.plan.spec.get("volumes", []):
            if not kinds & set(volume):
                continue
            for path in sorted(self._volumes[volume["name"]].rglob("*")):
                if not path.is_file() or path.stat().st_size > 1_000_000:
                    continue
                try:
                    text = path.read_text()
                except UnicodeDecodeError:
                    continue
                new = listen_on_pod_address(
                    self.cluster.network.resolve_text(view.rewrite_text(text)), self.ip)
                if new != text:
                    mode = path.stat().st_mode
                    path.chmod(mode | 0o200)
                    path.write_text(new)
                    path.chmod(mode)

    # -- containers --

    def _image(self, container: Manifest) -> tuple[str, Image]:
        reference = container["image"].split("@")[0]
        repository = reference.rsplit(":", 1)[0] if ":" in reference.split("/")[-1] else reference
        if repository not in self.cluster.images:
            raise EmulationError(f"no local emulation of image {container['image']!r}; "
                                 f"known: {sorted(self.cluster.images)}")
        return repository, self.cluster.images[repository]

    def _prepare_bin(self, repository: str, image: Image) -> Path:
        directory = self._bin / re.sub(r"[^\w.-]", "_", repository)
        if directory.exists():
            return directory
        directory.mkdir(parents=True)
        for name, target in image.programs.items():
            (directory / name).symlink_to(target)
        if image.redis_cli is not None:
            wrapper = directory / "redis-cli"
            wrapper.write_text(_redis_cli_wrapper(image.redis_cli, self.ip,
                                                  self.cluster.network.names))
            wrapper.chmod(0o755)
        return directory

    def environment(self, container: Manifest) -> ContainerRun:
        """What ``container`` runs with: its full environment (the image's, then the
        kubelet's, paths made local and names resolved), its file view and working directory."""
        repository, image = self._image(container)
        view = self._view(container, image)
        bin_dir = self._prepare_bin(repository, image)
        env = {name: view.local(value) for name, value in image.env.items()}
        env["PATH"] = os.pathsep.join([str(bin_dir), *map(str, image.path), env.get(
            "PATH", "/usr/local/bin:/usr/bin:/bin")])
        env["HOSTNAME"] = self.name
        env |= {name: self.ip for name in image.listen_env}
        kube_env, secret_names = container_env(self.plan, container, self.cluster.objects)
        for name, value in kube_env.items():
            # A Secret's value is passed as it is: it holds no paths or names to resolve.
            env[name] = value if name in secret_names else self.cluster.network.resolve_text(
                view.local(value))
        workdir = container.get("workingDir") or image.workdir
        local_workdir = Path(view.local(workdir))
        if str(local_workdir) == workdir:
            # Not a mount: the image's own directory, empty and read-only as its root fs is.
            local_workdir = self.root / "rootfs" / workdir.lstrip("/")
            if not local_workdir.exists():
                local_workdir.mkdir(parents=True)
                local_workdir.chmod(0o555)
        return ContainerRun(env, kube_env, view, local_workdir)

    def argv(self, container: Manifest, run: ContainerRun) -> list[str]:
        """command + args, ``$(VAR)`` expanded with the container's env, paths made local."""
        if not container.get("command"):
            raise EmulationError(f"{self.name}/{container['name']}: no command; the image's "
                                 "entrypoint is not emulated")
        words = [*container["command"], *container.get("args", [])]
        return [run.view.local(expand(word, run.kube_env)) for word in words]

    def run_init_containers(self, timeout: float = 60.0) -> None:
        for container in self.plan.spec.get("initContainers", []):
            run = self.environment(container)
            argv = self.argv(container, run)
            log = self.log_path(container["name"])
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("ab") as out:
                result = subprocess.run(argv, env=run.env, cwd=run.workdir, stdout=out,
                                        stderr=subprocess.STDOUT, timeout=timeout, check=False)
            if result.returncode != 0:
                raise EmulationError(f"init container {self.name}/{container['name']} exited "
                                     f"{result.returncode}:\n{self.log_tail(container['name'])}")

    def start(self) -> None:
        """Volumes, init containers, then every container (not waiting for probes)."""
        self._materialise()
        self._localise_files({"configMap"})
        self.run_init_containers()
        self._localise_files({"emptyDir"})
        for container in self.plan.spec["containers"]:
            run = self.environment(container)
            process = ManagedProcess(f"{self.name}/{container['name']}",
                                     self.argv(container, run), run.env,
                                     self.log_path(container["name"]), cwd=run.workdir)
            self.processes[container["name"]] = process
            process.start()

    def stop(self, timeout: float = 10.0) -> None:
        for process in reversed(self.processes.values()):
            process.stop(timeout)

    # -- probes --

    def _port(self, container: Manifest, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for declared in container.get("ports", []):
            if declared.get("name") == port:
                return int(declared["containerPort"])
        raise EmulationError(f"{self.name}/{container['name']}: no port named {port!r}")

    def exec(self, container_name: str, argv: list[str],
             timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """``kubectl exec <pod> -c <container> -- argv``: run in the container's environment."""
        run = self.environment(self.plan.container(container_name))
        return subprocess.run([run.view.local(word) for word in argv], env=run.env,
                              cwd=run.workdir, capture_output=True, text=True, timeout=timeout,
                              check=False)

    def probe(self, container_name: str, kind: str) -> ProbeResult:
        """Run ``container``'s ``kind`` probe (``startupProbe``…) once."""
        container = self.plan.container(container_name)
        probe = container[kind]
        timeout = float(probe.get("timeoutSeconds", 1))
        if "exec" in probe:
            run = self.environment(container)
            # The kubelet expands only the container's plain `value` variables here.
            static = {e["name"]: e.get("value", "") for e in container.get("env", [])
                      if "valueFrom" not in e}
            argv = [run.view.local(expand(word, static)) for word in probe["exec"]["command"]]
            try:
                result = subprocess.run(argv, env=run.env, cwd=run.workdir, capture_output=True,
                                        text=True, timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                return ProbeResult(False, f"timed out after {timeout:g}s")
            return ProbeResult(result.returncode == 0, (result.stdout + result.stderr).strip())
        if "httpGet" in probe:
            get = probe["httpGet"]
            if get.get("scheme", "HTTP") != "HTTP":
                raise EmulationError("only HTTP httpGet probes are emulated")
            host = get.get("host") or self.ip
            connection = http.client.HTTPConnection(host, self._port(container, get["port"]),
                                                    timeout=timeout)
            try:
                headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
                connection.request("GET", get.get("path", "/"), headers=headers)
                response = connection.getresponse()
                body = response.read(2000).decode(errors="replace")
                return ProbeResult(200 <= response.status < 400, f"HTTP {response.status}: "
                                   f"{body[:200]}")
            except OSError as error:
                return ProbeResult(False, f"{type(error).__name__}: {error}")
            finally:
                connection.close()
        if "tcpSocket" in probe:
            address = (probe["tcpSocket"].get("host") or self.ip,
                       self._port(container, probe["tcpSocket"]["port"]))
            try:
                with socket.create_connection(address, timeout=timeout):
                    return ProbeResult(True, f"connected to {address[0]}:{address[1]}")
            except OSError as error:
                return ProbeResult(False, f"{type(error).__name__}: {error}")
        raise EmulationError(f"{self.name}/{container_name}: unsupported probe {sorted(probe)}")

    def probes(self) -> Iterator[tuple[str, str]]:
        """Every (container, probe kind) of the pod's containers."""
        for container in self.plan.spec["containers"]:
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                if kind in container:
                    yield container["name"], kind

    def wait_probe(self, container: str, kind: str, deadline: float,
                   interval: float = 0.3) -> ProbeResult:
        """Poll a probe until it passes; raise when the deadline passes or the process ends."""
        result = ProbeResult(False, "never run")
        while True:
            process = self.processes.get(container)
            if process is not None and not process.alive:
                raise EmulationError(f"{self.name}/{container} exited {process.returncode} "
                                     f"while waiting for its {kind}:\n{self.log_tail(container)}")
            result = self.probe(container, kind)
            if result.ok:
                return result
            if time.monotonic() >= deadline:
                raise EmulationError(f"{self.name}/{container}: {kind} still failing: "
                                     f"{result.output}\n--- log:\n{self.log_tail(container)}")
            time.sleep(interval)

    def wait_ready(self, deadline: float) -> None:
        """Startup probes, then readiness probes, of every container, as the kubelet orders."""
        for kind in ("startupProbe", "readinessProbe"):
            for container, probe_kind in self.probes():
                if probe_kind == kind:
                    self.wait_probe(container, kind, deadline)

    def wait_exit(self, deadline: float) -> dict[str, int]:
        """For run-to-completion pods: every container's exit status."""
        statuses: dict[str, int] = {}
        for name, process in self.processes.items():
            status = process.wait(max(0.0, deadline - time.monotonic()))
            if status is None:
                raise EmulationError(f"{self.name}/{name} still running:\n{self.log_tail(name)}")
            statuses[name] = status
        return statuses


class Cluster:
    """Runs pods of one render under ``root`` (pods/<pod>/…, logs/<pod>_<container>.log)."""

    def __init__(self, render: Render, root: Path, images: Mapping[str, Image],
                 network: Network) -> None:
        self.render = render
        self.root = root
        self.images = dict(images)
        self.network = network
        self.objects = Objects(render.objects)
        self.pods: list[RunningPod] = []

    def claim_templates(self, plan: PodPlan) -> list[Manifest]:
        kind, _, name = plan.owner.partition("/")
        if kind != "StatefulSet":
            return []
        return list(self.render.named(kind, name)["spec"].get("volumeClaimTemplates", []))

    def plan(self, plans: Iterable[PodPlan]) -> list[PodPlan]:
        """Give ``plans`` their addresses (before any pod starts, so every name resolves)."""
        plans = list(plans)
        for plan in plans:
            self.network.assign(plan)
        return plans

    def start(self, plan: PodPlan) -> RunningPod:
        pod = RunningPod(self, plan)
        self.pods.append(pod)
        pod.start()
        return pod

    def pod(self, name: str) -> RunningPod:
        for pod in self.pods:
            if pod.name == name:
                return pod
        raise KeyError(f"no running pod {name}; have {[p.name for p in self.pods]}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every pod, the last started first (the platform before its Redis)."""
        errors: list[BaseException] = []
        for pod in reversed(self.pods):
            try:
                pod.stop(timeout)
            except Exception as error:  # keep stopping the others
                errors.append(error)
        if errors:
            raise errors[0]
