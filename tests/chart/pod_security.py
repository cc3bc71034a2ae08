"""The Pod Security Standards' "restricted" profile (policy version latest), as a checker.

Each check is one control of the published profile (baseline controls included, since
restricted contains them); a pod spec passes when :func:`violations` returns nothing. The
chart's own rules go one step further: a numeric non-root UID and a read-only root filesystem
in every container (:func:`platform_violations`).
"""

from __future__ import annotations

from typing import Any

Spec = dict[str, Any]

#: Volume types the restricted profile allows.
ALLOWED_VOLUME_TYPES = frozenset({
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
})
#: Sysctls the baseline profile calls safe.
SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
})
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t",
                           "container_engine_t"})
SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_TYPES = frozenset({"RuntimeDefault", "Localhost"})


def _containers(spec: Spec) -> list[Spec]:
    return [*spec.get("initContainers", []), *spec.get("containers", []),
            *spec.get("ephemeralContainers", [])]


def violations(spec: Spec) -> list[str]:
    """Every control of the restricted profile that ``spec`` (a PodSpec) breaks."""
    found: list[str] = []
    pod_sc: Spec = spec.get("securityContext") or {}

    # baseline: host namespaces, host ports, HostProcess, hostPath
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            found.append(f"{flag} is true")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        found.append("pod windowsOptions.hostProcess is true")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUME_TYPES:
            found.append(f"volume {volume['name']} has a disallowed type {sorted(kinds)}")
    for sysctl in pod_sc.get("sysctls", []):
        if sysctl.get("name") not in SAFE_SYSCTLS:
            found.append(f"unsafe sysctl {sysctl.get('name')}")
    found += _selinux(pod_sc, "pod")
    found += _apparmor(pod_sc, "pod")
    if pod_sc.get("runAsUser") == 0:
        found.append("pod runAsUser is 0")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_TYPES:
        found.append(f"pod seccompProfile.type is {pod_seccomp}")

    for container in _containers(spec):
        name = f"container {container['name']}"
        sc: Spec = container.get("securityContext") or {}
        if sc.get("privileged"):
            found.append(f"{name}: privileged")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"{name}: windowsOptions.hostProcess")
        for port in container.get("ports", []):
            if port.get("hostPort"):
                found.append(f"{name}: hostPort {port['hostPort']}")
        if sc.get("procMount", "Default") != "Default":
            found.append(f"{name}: procMount {sc['procMount']}")
        found += _selinux(sc, name)
        found += _apparmor(sc, name)
        # restricted: privilege escalation, non-root, seccomp, capabilities
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        run_as_non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if run_as_non_root is not True:
            found.append(f"{name}: runAsNonRoot is not true (pod or container)")
        if sc.get("runAsUser") == 0:
            found.append(f"{name}: runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in SECCOMP_TYPES:
            found.append(f"{name}: seccompProfile.type is {seccomp} (pod or container)")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"{name}: capabilities.drop lacks ALL")
        added = set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            found.append(f"{name}: adds capabilities {sorted(added)}")
    return found


def platform_violations(spec: Spec) -> list[str]:
    """The chart's rules beyond the profile: numeric non-root UID, read-only root fs."""
    found: list[str] = []
    pod_sc: Spec = spec.get("securityContext") or {}
    for container in _containers(spec):
        sc: Spec = container.get("securityContext") or {}
        uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
        if not isinstance(uid, int) or isinstance(uid, bool) or uid <= 0:
            found.append(f"container {container['name']}: no numeric non-root runAsUser ({uid!r})")
        if sc.get("readOnlyRootFilesystem") is not True:
            found.append(f"container {container['name']}: root filesystem is writable")
    if spec.get("automountServiceAccountToken") is not False:
        found.append("automountServiceAccountToken is not false")
    if spec.get("enableServiceLinks") is not False:
        # Service links would inject PLATFORM_TASKS_MONITOR_PORT=tcp://… into every pod.
        found.append("enableServiceLinks is not false")
    return found


def _selinux(sc: Spec, where: str) -> list[str]:
    options = sc.get("seLinuxOptions") or {}
    found = []
    if options.get("type", "") not in SELINUX_TYPES:
        found.append(f"{where}: seLinuxOptions.type {options['type']}")
    for key in ("user", "role"):
        if options.get(key):
            found.append(f"{where}: seLinuxOptions.{key} is set")
    return found


def _apparmor(sc: Spec, where: str) -> list[str]:
    profile = (sc.get("appArmorProfile") or {}).get("type")
    if profile is not None and profile not in APPARMOR_TYPES:
        return [f"{where}: appArmorProfile.type {profile}"]
    return []
