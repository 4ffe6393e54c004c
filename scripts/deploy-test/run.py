#!/usr/bin/env python3
"""Proves the deployment artifacts with the real tools (docs/deploy.md):

1. chart: Helm's own engine (helm-python-sdk) lints it (strict) and renders it
   with the defaults, each collectionMethod and each BTF source; bad values fail
   at render time naming the value; every rendered manifest is validated with
   kubernetes-validate against the oldest and the newest Kubernetes supported;
2. image: scripts/image.sh builds it, and the real agent in it accepts every
   rendered config file;
3. pod: the rendered DaemonSet's pod runs under podman, translated from the
   manifest (mounts, privileges, args, env, config: see podman_args), and is
   checked from outside: /ready and /live, a host exec with its host exe path and
   args, an exec in a second container with that container's id, a TCP
   connection attributed to its process, the BTF named in /status with the
   sha256 of the host's /sys/kernel/btf/vmlinux; then with btf.source=none, auto
   falls back to ebpf, and says why in /status and in the termination message.

Run by scripts/test.sh with the venv that scripts/setup.sh makes. Cleans up the
containers and images it creates. Prints one line per check and a summary line.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

try:
    import helm_python as helm
    import kubernetes_validate
    import yaml
except ImportError as e:
    sys.exit(f"deploy-test: {e}: run it with the venv scripts/setup.sh makes: "
             "~/.cache/auspex/deploy-venv/bin/python scripts/deploy-test/run.py")

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "auspex"
RELEASE, NAMESPACE = "auspex", "auspex"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the
# newest that kubernetes-validate has schemas for.
KUBE_OLDEST = "1.25.0"
KUBE_NEWEST = kubernetes_validate.utils.latest_version()
HOST_BTF = Path("/sys/kernel/btf/vmlinux")
# The agent's options the chart sets from its own values (not in `config`).
CHART_OWNED = {"method", "btf", "kernel_btf", "listen", "grpc_listen", "termination_log",
               "http_tls_cert", "http_tls_key", "http_tls_client_ca", "http_insecure",
               "grpc_tls_cert", "grpc_tls_key", "grpc_tls_client_ca", "grpc_insecure"}

# What the test machine needs from podman, whatever the manifest says
# (docs/deploy.md, "How it is tested"): crun refuses its hybrid cgroup layout
# (runc does not; cgroupfs, as PID 1 is not systemd), and root there lacks
# CAP_SYS_RESOURCE, so the runtime cannot raise limits not given explicitly.
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs"]
HOST_LIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]
RUN_ID = f"{os.getpid()}-{secrets.token_hex(3)}"
# What spec.nodeName gives the pod: not this host's name, so that events
# carrying it prove the downward-API variable reached the agent.
NODE_NAME = f"deploy-test-node-{RUN_ID}"
LABEL = f"auspex-deploy-test={RUN_ID}"


class Checks:
    """Counts checks and prints one line per check."""

    def __init__(self) -> None:
        self.passed = self.failed = self.skipped = 0

    def ok(self, what: str) -> None:
        self.passed += 1
        print(f"deploy-test: ok    {what}", flush=True)

    def fail(self, what: str, seen: str = "") -> None:
        self.failed += 1
        print(f"deploy-test: FAIL  {what}", flush=True)
        if seen:
            for line in seen.rstrip().splitlines():
                print(f"deploy-test:         {line}", flush=True)

    def skip(self, what: str, why: str) -> None:
        self.skipped += 1
        print(f"deploy-test: skip  {what}: {why}", flush=True)

    def check(self, cond: bool, what: str, seen: str = "") -> bool:
        (self.ok(what) if cond else self.fail(what, seen))
        return cond


def say(text: str) -> None:
    print(f"deploy-test: {text}", flush=True)


class NoWorkDir(Exception):
    """A scratch directory could not be made (a full disk, most likely)."""


def work_dir(prefix: str) -> Path:
    """A scratch directory for one check, under the system's temporary
    directory. If none can be made, the error says why and how full each
    candidate's file system is: a CI run once ended here with only Python's
    "No usable temporary directory" and a traceback."""
    try:
        return Path(tempfile.mkdtemp(prefix=prefix))
    except OSError as e:
        space = []
        candidates = [os.environ.get(v) for v in ("TMPDIR", "TEMP", "TMP")]
        for d in dict.fromkeys(d for d in candidates + ["/tmp", "/var/tmp", os.getcwd()] if d):
            try:
                u = shutil.disk_usage(d)
                space.append(f"{d}: {u.free >> 20} MiB free of {u.total >> 20} MiB")
            except OSError as why:
                space.append(f"{d}: {why.strerror}")
        raise NoWorkDir(f"cannot make a scratch directory ({e}); {'; '.join(space)}") from e


# ---------------------------------------------------------------- the chart

def render(values: dict) -> dict[str, list[dict]]:
    """The chart rendered by Helm's engine: {template: [documents]}."""
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = {}
    for name, text in out.items():
        if name.endswith("NOTES.txt"):
            continue
        parsed = [d for d in yaml.safe_load_all(text) if d]
        if parsed:
            docs[name] = parsed
    return docs


def manifests(docs: dict[str, list[dict]]) -> list[dict]:
    return [d for ds in docs.values() for d in ds]


def find(docs: dict[str, list[dict]], kind: str) -> dict:
    found = [d for d in manifests(docs) if d.get("kind") == kind]
    if len(found) != 1:
        raise AssertionError(f"expected one {kind}, rendered {len(found)}")
    return found[0]


def agent_config(docs) -> dict:
    return yaml.safe_load(find(docs, "ConfigMap")["data"]["config.yaml"])


def pod_spec(docs) -> dict:
    return find(docs, "DaemonSet")["spec"]["template"]["spec"]


def mounts_by_path(spec: dict) -> dict[str, dict]:
    """mountPath -> the volume behind it."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    return {m["mountPath"]: volumes[m["name"]] for m in spec["containers"][0].get("volumeMounts", [])}


def validate_all(c: Checks, label: str, docs) -> None:
    for version in (KUBE_OLDEST, KUBE_NEWEST):
        errors = []
        for doc in manifests(docs):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                # A CRD's kind (the ServiceMonitor): Kubernetes has no schema
                # for it; its apiVersion and kind are checked in chart_checks.
                if doc["apiVersion"] != "monitoring.coreos.com/v1":
                    errors.append(f"{doc['kind']}: no schema for {doc['apiVersion']}")
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{doc['kind']} {'.'.join(map(str, e.path))}: {e.message}")
        c.check(not errors, f"{label}: every manifest valid for Kubernetes {version}", "\n".join(errors))


def chart_checks(c: Checks) -> None:
    say(f"chart {CHART.relative_to(REPO)}: Helm {helm.helm_sdk_version()} (helm-python-sdk), "
        f"kubernetes-validate {KUBE_OLDEST} and {KUBE_NEWEST}")
    for values in ({}, {"collectionMethod": "proc", "btf": {"source": "none"}}):
        report = helm.lint(str(CHART), values, strict=True)
        # Severity 1 is INFO ("icon is recommended"); 2 and up are warnings
        # and errors, which strict mode counts as failures.
        bad = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        c.check(not bad, f"lint --strict clean with {values or 'the defaults'}", json.dumps(bad, indent=1))

    cases = [("defaults", {})]
    cases += [(f"collectionMethod={m}", {"collectionMethod": m}) for m in ("auto", "core_bpf", "ebpf", "proc")]
    cases += [
        ("btf.source=kernel", {"btf": {"source": "kernel"}}),
        ("btf.source=file", {"btf": {"source": "file", "file": {"hostPath": "/var/lib/auspex/5.10.0-btfhub.btf"}}}),
        ("btf.source=none", {"btf": {"source": "none"}}),
        ("privileged", {"privileged": True}),
        ("grpc+serviceMonitor+config", {
            "grpc": {"enabled": True, "insecure": True}, "serviceMonitor": {"enabled": True},
            "config": {"report": "both", "ring_buffer_size": "32M", "afterglow": 0,
                       "never_aggregate": ["203.0.113.0/24"], "aggregate_public": True},
            "extraEnv": [{"name": "RUST_LOG", "value": "auspex=debug"}],
            "priorityClassName": "system-node-critical",
        }),
        ("tls", {"grpc": {"enabled": True}, "serviceMonitor": {"enabled": True},
                 "tls": {"secretName": "auspex-tls", "grpcClientCA": True}}),
        ("tls+serviceMonitor.tlsConfig", {
            "grpc": {"enabled": True},
            "serviceMonitor": {"enabled": True, "tlsConfig": {
                "ca": {"secret": {"name": "auspex-tls", "key": "ca.crt"}}, "serverName": "auspex.test"}},
            "tls": {"secretName": "auspex-tls"}}),
    ]
    rendered = {}
    for label, values in cases:
        try:
            docs = render(values)
        except helm.HelmError as e:
            c.fail(f"{label}: renders", str(e))
            continue
        rendered[label] = (values, docs)
        cfg, spec = agent_config(docs), pod_spec(docs)
        mounts = mounts_by_path(spec)
        container = spec["containers"][0]
        sc = container["securityContext"]
        method = values.get("collectionMethod", "auto")
        source = values.get("btf", {}).get("source", "kernel")
        problems = []
        if cfg.get("method") != method:
            problems.append(f"config method {cfg.get('method')!r}, want {method!r}")
        if cfg.get("kernel_btf") != "/host/sys/kernel/btf/vmlinux":
            problems.append(f"kernel_btf {cfg.get('kernel_btf')!r}")
        kernel_mount = mounts.get("/host/sys/kernel/btf/vmlinux", {}).get("hostPath", {})
        if (source == "kernel") != (kernel_mount.get("path") == "/sys/kernel/btf/vmlinux"):
            problems.append(f"kernel BTF mount {kernel_mount} with btf.source={source}")
        if source == "file":
            host = values["btf"]["file"]["hostPath"]
            if cfg.get("btf") != "/host" + host or mounts.get("/host" + host, {}).get("hostPath", {}).get("path") != host:
                problems.append(f"btf file: config {cfg.get('btf')!r}, mounts {list(mounts)}")
        elif "btf" in cfg:
            problems.append(f"btf {cfg['btf']!r} with btf.source={source}")
        if ("/sys/kernel/tracing" in mounts) != (method in ("auto", "ebpf")):
            problems.append(f"tracefs mounted: {'/sys/kernel/tracing' in mounts} for {method}")
        if mounts.get("/host/sys/fs/cgroup", {}).get("hostPath", {}).get("path") != "/sys/fs/cgroup":
            problems.append("no read-only host cgroup mount")
        if not all(m.get("readOnly") for m in container["volumeMounts"]):
            problems.append("a mount is not read-only")
        if not spec.get("hostPID"):
            problems.append("no hostPID")
        if values.get("privileged"):
            if sc.get("privileged") is not True or "capabilities" in sc:
                problems.append(f"privileged: {sc}")
        elif sc.get("privileged") is not False or sc["capabilities"]["drop"] != ["ALL"]:
            problems.append(f"not privileged with explicit capabilities: {sc}")
        if container["readinessProbe"]["httpGet"]["path"] != "/ready" or \
                container["livenessProbe"]["httpGet"]["path"] != "/live":
            problems.append("probes")
        if container.get("terminationMessagePolicy") != "FallbackToLogsOnError" or \
                cfg.get("termination_log") != container.get("terminationMessagePath"):
            problems.append("termination message path/policy")
        if spec.get("tolerations") != [{"operator": "Exists"}] and "tolerations" not in values:
            problems.append(f"tolerations {spec.get('tolerations')}")
        for key, want in values.get("config", {}).items():
            if cfg.get(key) != want:
                problems.append(f"config {key}: {cfg.get(key)!r}, want {want!r}")
        if values.get("grpc", {}).get("enabled"):
            ports = {p["name"] for p in find(docs, "Service")["spec"]["ports"]}
            sm = find(docs, "ServiceMonitor")
            if ports != {"http", "grpc"} or not cfg["grpc_listen"].endswith(":9877") or \
                    sm["spec"]["endpoints"][0]["port"] != "http":
                problems.append(f"grpc service ports {ports}, grpc_listen {cfg['grpc_listen']}")
        elif cfg.get("grpc_listen") != "off":
            problems.append(f"grpc_listen {cfg.get('grpc_listen')}")
        tls = values.get("tls", {})
        if tls.get("secretName"):
            want = {"http_tls_cert": "/etc/auspex-tls/tls.crt", "http_tls_key": "/etc/auspex-tls/tls.key",
                    "grpc_tls_cert": "/etc/auspex-tls/tls.crt", "grpc_tls_key": "/etc/auspex-tls/tls.key",
                    "grpc_tls_client_ca": "/etc/auspex-tls/ca.crt" if tls.get("grpcClientCA") else None}
            got = {k: cfg.get(k) for k in want}
            secret = next((v for v in spec["volumes"] if v["name"] == "tls"), {}).get("secret", {})
            schemes = {container[p]["httpGet"].get("scheme") for p in ("readinessProbe", "livenessProbe")}
            if got != want or "http_insecure" in cfg or secret.get("secretName") != tls["secretName"] \
                    or "/etc/auspex-tls" not in mounts or schemes != {"HTTPS"} \
                    or "grpc_insecure" in cfg \
                    or find(docs, "ServiceMonitor")["spec"]["endpoints"][0].get("scheme") != "https":
                problems.append(f"tls: config {got}, secret {secret}, probe schemes {schemes}")
            sm_tls = find(docs, "ServiceMonitor")["spec"]["endpoints"][0].get("tlsConfig")
            want_sm = values.get("serviceMonitor", {}).get("tlsConfig") or {"insecureSkipVerify": True}
            if sm_tls != want_sm:
                problems.append(f"ServiceMonitor tlsConfig {sm_tls}, want {want_sm}")
        else:
            grpc = values.get("grpc", {})
            if cfg.get("http_insecure") is not True:
                problems.append("without tls.secretName the chart's 0.0.0.0 must be http_insecure")
            if cfg.get("grpc_insecure", False) != bool(grpc.get("enabled") and grpc.get("insecure")):
                problems.append(f"grpc_insecure {cfg.get('grpc_insecure')!r} with grpc {grpc}: only asked for")
        c.check(not problems, f"{label}: renders as the values say", "\n".join(problems))
        validate_all(c, label, docs)

    bad_values = [
        ({"collectionMethod": "modern"}, ["collectionMethod", "modern"]),
        ({"btf": {"source": "btfhub"}}, ["btf/source", "btfhub"]),
        ({"btf": {"source": "file"}}, ["btf/file/hostPath"]),
        ({"config": {"ring_bufer_size": "8M"}}, ["config", "ring_bufer_size"]),
        ({"config": {"method": "proc"}}, ["config", "method"]),
        ({"http": {"port": 70000}}, ["http/port"]),
        ({"config": {"scan_interval": 0}}, ["config/scan_interval"]),
        ({"config": {"report": "delta"}}, ["config/report", "delta"]),
        ({"serviceMonitor": {"enabled": True}, "service": {"enabled": False}}, ["service.enabled"]),
        ({"grpc": {"enabled": True}}, ["grpc.enabled", "tls.secretName", "grpc.insecure: true"]),
    ]
    for values, names in bad_values:
        try:
            render(values)
            c.fail(f"bad values {values} are refused", "rendered without an error")
        except helm.HelmError as e:
            msg = str(e)
            c.check(all(n in msg for n in names), f"bad values {values} fail naming {', '.join(names)}", msg)
    return rendered


# ---------------------------------------------------------- pod -> podman

class NotTranslatable(Exception):
    pass


class PodStartError(Exception):
    """What the kubelet would refuse before starting the container."""


def podman_args(spec: dict, configmaps: dict[str, dict], work: Path, name: str) -> tuple[list[str], dict]:
    """`podman run` arguments for the pod's container, from the manifest.

    Every field of the pod spec is either translated or named here as not
    applicable to one node without a control plane; an unknown field raises,
    so the chart cannot grow a field this test silently ignores."""
    applied: dict = {}
    not_applicable = {"serviceAccountName", "priorityClassName", "nodeSelector", "tolerations",
                      "affinity", "imagePullSecrets", "dnsPolicy"}
    if spec.get("enableServiceLinks", True):
        # Without a Service here there is nothing to link, but the agent
        # would see AUSPEX_* variables in a cluster.
        raise NotTranslatable("enableServiceLinks must be false")
    args = ["run", "--detach", "--name", name, "--label", LABEL, "--pull", "never",
            # podman mounts tmpfs over /tmp, /run... of a read-only container;
            # the kubelet does not.
            "--read-only-tmpfs=false"]
    for key, value in spec.items():
        if key in not_applicable or key in ("containers", "volumes"):
            continue
        if key == "hostPID":
            if value:
                args += ["--pid", "host"]
        elif key == "hostNetwork":
            args += ["--network", "host" if value else "bridge"]
            applied["hostNetwork"] = value
        elif key == "terminationGracePeriodSeconds":
            applied["stop_timeout"] = value
            args += ["--stop-timeout", str(value)]
        elif key == "enableServiceLinks":
            pass
        elif key == "automountServiceAccountToken":
            if value is not False:
                raise NotTranslatable("a service account token would be mounted")
        else:
            raise NotTranslatable(f"pod spec field {key}")
    if len(spec["containers"]) != 1 or spec.get("initContainers"):
        raise NotTranslatable("more than one container")
    container = spec["containers"][0]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    image = container["image"]
    entry = container.get("command")
    cmd = container.get("args", [])
    for key, value in container.items():
        if key in ("name", "image", "command", "args", "ports"):
            continue
        if key == "imagePullPolicy":
            if value == "Always":
                raise NotTranslatable("imagePullPolicy Always: no registry here")
        elif key == "env":
            for e in value:
                if "value" in e:
                    args += ["--env", f"{e['name']}={e['value']}"]
                elif e.get("valueFrom") == {"fieldRef": {"fieldPath": "spec.nodeName"}}:
                    # The downward API: the node the pod was scheduled on.
                    args += ["--env", f"{e['name']}={NODE_NAME}"]
                else:
                    raise NotTranslatable(f"env {e['name']} from {e}")
        elif key in ("readinessProbe", "livenessProbe"):
            get = value["httpGet"]
            port = get["port"]
            if isinstance(port, str):
                port = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
            applied[key] = (get["path"], port)
        elif key == "terminationMessagePath":
            # The kubelet creates an empty file per container and mounts it.
            f = work / "termination-log"
            f.write_text("")
            applied["termination_log"] = f
            args += ["--volume", f"{f}:{value}"]
        elif key == "terminationMessagePolicy":
            applied[key] = value
        elif key == "resources":
            limits = value.get("limits", {})
            for res, amount in limits.items():
                if res == "memory":
                    args += ["--memory", str(amount).replace("Mi", "m").replace("Gi", "g")]
                elif res == "cpu":
                    cpu = str(amount)
                    args += ["--cpus", str(int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu))]
                else:
                    raise NotTranslatable(f"limit {res}")
            # requests only schedule.
        elif key == "securityContext":
            args += security_args(value)
        elif key == "volumeMounts":
            for m in value:
                args += mount_args(m, volumes[m["name"]], configmaps, work)
        else:
            raise NotTranslatable(f"container field {key}")
    if entry:
        args += ["--entrypoint", json.dumps(entry)]
    args += HOST_LIMITS
    args += [image] + cmd
    return args, applied


def security_args(sc: dict) -> list[str]:
    args = []
    for key, value in sc.items():
        if key == "privileged":
            if value:
                args.append("--privileged")
        elif key == "allowPrivilegeEscalation":
            if value is False:
                args += ["--security-opt", "no-new-privileges"]
        elif key == "capabilities":
            args += [a for c in value.get("drop", []) for a in ("--cap-drop", c)]
            args += [a for c in value.get("add", []) for a in ("--cap-add", c)]
        elif key == "seccompProfile":
            kind = value["type"]
            if kind == "Unconfined":
                args += ["--security-opt", "seccomp=unconfined"]
            elif kind != "RuntimeDefault":
                raise NotTranslatable(f"seccomp profile {kind}")
        elif key == "runAsUser":
            args += ["--user", str(value)]
        elif key == "runAsNonRoot":
            if value and sc.get("runAsUser", 1) == 0:
                raise PodStartError("runAsNonRoot with runAsUser 0")
        elif key == "readOnlyRootFilesystem":
            if value:
                args.append("--read-only")
        else:
            raise NotTranslatable(f"securityContext field {key}")
    return args


def mount_args(mount: dict, volume: dict, configmaps: dict, work: Path) -> list[str]:
    extra = set(mount) - {"name", "mountPath", "readOnly"}
    if extra:
        raise NotTranslatable(f"volumeMount fields {extra}")
    ro = ",ro" if mount.get("readOnly") else ""
    dest = mount["mountPath"]
    if "hostPath" in volume:
        path, kind = volume["hostPath"]["path"], volume["hostPath"].get("type", "")
        # The kubelet checks the type before it starts the container.
        checks = {"File": os.path.isfile, "Directory": os.path.isdir, "": lambda p: True}
        if kind not in checks:
            raise NotTranslatable(f"hostPath type {kind}")
        if not checks[kind](path):
            raise PodStartError(f"hostPath type check failed: {path} is not a {kind}")
        # rbind, as the CRI runtimes mount hostPath volumes: submounts come
        # along (cgroup v2 at /sys/fs/cgroup/unified on hybrid hosts).
        return ["--volume", f"{path}:{dest}:rbind{ro}"]
    if "configMap" in volume:
        cm = configmaps[volume["configMap"]["name"]]
        d = work / f"configmap-{volume['name']}"
        d.mkdir()
        for key, text in cm["data"].items():
            (d / key).write_text(text)
        return ["--volume", f"{d}:{dest}:ro"]
    if "emptyDir" in volume:
        return ["--tmpfs", dest]
    raise NotTranslatable(f"volume {volume}")


# ---------------------------------------------------------- running pods

def podman(*args: str, check: bool = True, capture: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(PODMAN + list(args), check=check, text=True, timeout=timeout,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.PIPE if capture else None)


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def free_port() -> int:
    """A port free on the host for the pod's HTTP API (hostNetwork: the
    pod's port is the node's), away from the agent's default."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pod:
    """The rendered DaemonSet's pod, started under podman."""

    def __init__(self, docs, label: str, without_capability: str | None = None,
                 runtime_args: tuple[str, ...] = ()) -> None:
        self.label = label
        self.work = work_dir("auspex-deploy-")
        self.name = f"auspex-deploy-test-{RUN_ID}-{label}"
        spec = copy.deepcopy(pod_spec(docs))
        if without_capability:
            added = spec["containers"][0]["securityContext"]["capabilities"]["add"]
            added.remove(without_capability)
        cms = {d["metadata"]["name"]: d for d in manifests(docs) if d["kind"] == "ConfigMap"}
        self.args, self.applied = podman_args(spec, cms, self.work, self.name)
        # What a runtime does on its own, not from the manifest.
        self.args[1:1] = runtime_args
        self.port = self.applied["readinessProbe"][1]
        self.id = None

    def start(self) -> None:
        say(f"{self.label}: podman {' '.join(self.args)}")
        self.id = podman(*self.args).stdout.strip()

    def logs(self) -> tuple[str, str]:
        r = podman("logs", self.name, check=False)
        return r.stdout, r.stderr

    def events(self) -> list[dict]:
        out = []
        for line in self.logs()[0].splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return out

    def running(self) -> bool:
        r = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return r.stdout.strip() == "true"

    def wait_ready(self, timeout: float = 60) -> tuple[int, str]:
        path, port = self.applied["readinessProbe"]
        deadline = time.monotonic() + timeout
        code, body = 0, ""
        while time.monotonic() < deadline:
            code, body = http_get(port, path)
            if code == 200 or not self.running():
                break
            time.sleep(0.5)
        return code, body

    def status(self) -> dict:
        code, body = http_get(self.port, "/status")
        return json.loads(body) if code == 200 else {"http": code, "body": body}

    def diagnostics(self) -> str:
        out, err = self.logs()
        status = http_get(self.port, "/status")[1]
        return (f"--- agent stderr (tail)\n{chr(10).join(err.splitlines()[-25:])}\n"
                f"--- /status\n{status[:3000]}\n--- termination log\n"
                f"{self.applied['termination_log'].read_text()}")

    def stop(self) -> None:
        if self.id:
            podman("stop", "--time", str(self.applied.get("stop_timeout", 10)), self.name, check=False)

    def remove(self) -> None:
        podman("rm", "--force", "--volumes", self.name, check=False)
        shutil.rmtree(self.work, ignore_errors=True)


def wait_for(pod: Pod, pred, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in pod.events():
            if pred(e):
                return e
        time.sleep(0.5)
    return None


def udp_attributed(pod: "Pod") -> dict | None:
    """Sends one datagram from this process; the connection_open the agent
    reports for it (the UDP hooks sit on the cgroup v2 root it found)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        tx.sendto(b"auspex", rx.getsockname())
        port = tx.getsockname()[1]
        return wait_for(pod, lambda e: e.get("type") == "connection_open" and e.get("protocol") == "udp"
                        and e.get("role") == "client" and e.get("local", {}).get("port") == port)


def container_exec(pod: "Pod", busybox: str) -> tuple[str, dict | None]:
    """Runs a command in a second container; its id and the agent's exec event."""
    marker = f"auspex-deploy-{secrets.token_hex(4)}"
    cid = podman("create", "--label", LABEL, *HOST_LIMITS, busybox,
                 "/bin/busybox", "echo", marker).stdout.strip()
    try:
        podman("start", "--attach", cid)
        # The exact argv: podman's own command line carries the marker too.
        ev = wait_for(pod, lambda e: e.get("type") == "process_exec"
                      and e["process"].get("args") == ["/bin/busybox", "echo", marker])
    finally:
        podman("rm", "--force", cid, check=False)
    return cid, ev


def busybox_image(work: Path) -> str:
    """A throwaway image with busybox-static's applets (podman import)."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(busybox):
        raise FileNotFoundError("busybox-static is not installed (scripts/setup.sh installs it)")
    root = work / "rootfs.tar"
    with tarfile.open(root, "w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        for applet in ("sh", "sleep", "echo"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    name = f"localhost/auspex-deploy-test-busybox:{RUN_ID}"
    podman("import", str(root), name)
    return name


def pod_checks(c: Checks, image: str, busybox: str | None) -> None:
    repo, tag = image.rsplit(":", 1)
    base = {"image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
            "http": {"port": free_port()}}

    # Processes older than the agent, which its startup scrape must find: a
    # root process (its /proc/PID/exe needs CAP_SYS_PTRACE) and a listener of
    # another user (its /proc/PID/fd needs CAP_DAC_READ_SEARCH).
    old = Fixtures()
    try:
        pod_runs(c, base, old, busybox)
    finally:
        old.stop()


class Fixtures:
    def __init__(self) -> None:
        self.sleep = subprocess.Popen(["/bin/sleep", f"600.{secrets.randbelow(10**6)}"])
        self.listen_port = free_port()
        self.listener = subprocess.Popen(
            ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "/usr/bin/python3", "-c",
             "import socket, sys, time\n"
             f"s = socket.socket(); s.bind(('127.0.0.1', {self.listen_port})); s.listen()\n"
             "print('listening', flush=True); time.sleep(600)"],
            stdout=subprocess.PIPE, text=True)
        assert self.listener.stdout.readline().strip() == "listening"

    def scraped_exe(self, pod: "Pod") -> str | None:
        """The exe the startup scrape gave the old root process."""
        ev = wait_for(pod, lambda e: e.get("type") == "process_exec" and e.get("scraped")
                      and e["process"]["pid"] == self.sleep.pid, timeout=5)
        return ev and ev["process"].get("exe")

    def listener_owner(self, pod: "Pod") -> int | None:
        """The owner the agent gave the old listener of user nobody."""
        ev = wait_for(pod, lambda e: e.get("type") == "endpoint_open"
                      and e.get("local", {}).get("port") == self.listen_port, timeout=8)
        return ev and ev.get("process", {}).get("pid")

    def stop(self) -> None:
        for p in (self.sleep, self.listener):
            p.kill()
            p.wait()


def pod_runs(c: Checks, base: dict, old: Fixtures, busybox: str | None) -> None:
    # --- the defaults: kernel BTF, auto
    docs = render(base)
    pod = Pod(docs, "kernel-btf")
    try:
        pod.start()
        code, body = pod.wait_ready()
        if not c.check(code == 200, "/ready turns 200 (the readinessProbe's path and port)",
                       f"last answer {code}: {body}\n{pod.diagnostics()}"):
            return
        live = http_get(pod.port, pod.applied["livenessProbe"][0])
        c.check(live[0] == 200, "/live answers 200 (the livenessProbe's path)", str(live))
        status = pod.status()
        say(f"kernel-btf: /status method {status.get('method')}, btf {json.dumps(status.get('btf'))}")
        lock = status.get("lockdown") or {}
        c.check(lock.get("seccomp") == "filter" and lock.get("no_new_privs") and not lock.get("problems")
                and set(lock.get("capabilities") or ()) <= {"cap_bpf", "cap_sys_ptrace", "cap_dac_read_search"},
                f"the agent locked itself down in the container (kept {lock.get('capabilities')})",
                json.dumps(lock))
        c.check(status.get("method") == "core_bpf", f"auto chose core_bpf (chose {status.get('method')})",
                json.dumps(status.get("attempts"), indent=1))
        btf = status.get("btf")
        if HOST_BTF.exists():
            want = hashlib.sha256(HOST_BTF.read_bytes()).hexdigest()
            c.check(isinstance(btf, dict) and btf.get("sha256") == want
                    and btf.get("path") == "/host/sys/kernel/btf/vmlinux" and btf.get("origin") == "kernel",
                    f"/status names the host's BTF, sha256 {want[:16]}... = host /sys/kernel/btf/vmlinux",
                    f"btf in /status: {json.dumps(btf)} (btf_source: {status.get('btf_source')})")
        else:
            c.skip("BTF checksum", f"{HOST_BTF} is missing on this host")

        exe = old.scraped_exe(pod)
        c.check(exe == "/usr/bin/sleep", "the startup scrape found a root process older than the agent, "
                "with its exe", f"exe {exe!r}")
        owner = old.listener_owner(pod)
        c.check(owner == old.listener.pid, "a listener of user nobody older than the agent has its owner",
                f"owner {owner}, want {old.listener.pid}")

        # An exec on the host.
        marker = f"auspex-deploy-{secrets.token_hex(4)}"
        printf = os.path.realpath(shutil.which("printf") or "/usr/bin/printf")
        subprocess.run([printf, "%s\n", marker], check=True, stdout=subprocess.DEVNULL)
        ev = wait_for(pod, lambda e: e.get("type") == "process_exec"
                      and marker in (e["process"].get("args") or []))
        c.check(ev is not None and ev["process"].get("exe") == printf
                and ev["process"]["args"] == [printf, "%s\n", marker] and not ev["process"].get("container_id"),
                f"host exec reported with its host exe path {printf} and args",
                json.dumps(ev) if ev else "no exec event with the marker")
        c.check(ev is not None and ev.get("node") == NODE_NAME,
                f"events name the node from spec.nodeName ({NODE_NAME})",
                json.dumps(ev) if ev else "no exec event with the marker")

        # An exec in a second container, with that container's id.
        if busybox:
            cid, ev = container_exec(pod, busybox)
            say(f"kernel-btf: container {cid[:12]}: exec event {json.dumps(ev)}")
            c.check(ev is not None and ev["process"].get("container_id") == cid[:12],
                    f"exec in a second container reported with its id {cid[:12]}",
                    json.dumps(ev) if ev else "no exec event with the marker")
        else:
            c.skip("container exec", "no busybox image")

        # A TCP connection, attributed to this process (client and server).
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            client = socket.create_connection(server.getsockname())
            conn, _ = server.accept()
            cport = client.getsockname()[1]
            ev = wait_for(pod, lambda e: e.get("type") == "connection_open"
                          and e.get("role") == "client" and e.get("local", {}).get("port") == cport)
            client.close()
            conn.close()
        c.check(ev is not None and ev.get("process", {}).get("pid") == os.getpid(),
                f"TCP connection from port {cport} attributed to this process (pid {os.getpid()})",
                json.dumps(ev) if ev else "no connection_open with that port")
        ev = udp_attributed(pod)
        c.check(ev is not None and ev.get("process", {}).get("pid") == os.getpid()
                and not status.get("degraded"),
                "a UDP flow attributed to this process, no feature degraded",
                f"event {json.dumps(ev)}, degraded {status.get('degraded')}")
        pod.stop()
        term = pod.applied["termination_log"].read_text()
        c.check("fatal" not in term.lower() and "error" not in term.lower(),
                "no fatal error in the termination message after SIGTERM", term)
    except Exception:
        c.fail("kernel-btf pod", traceback.format_exc() + pod.diagnostics())
    finally:
        pod.remove()

    # --- the BTF mount removed: auto falls back, and says why
    values = dict(base, btf={"source": "none"}, http={"port": free_port()})
    docs = render(values)
    pod = Pod(docs, "no-btf")
    try:
        pod.start()
        code, body = pod.wait_ready()
        status = pod.status()
        attempts = status.get("attempts") or []
        first = attempts[0] if attempts else {}
        c.check(code == 200 and status.get("method") == "ebpf",
                f"without the BTF mount auto falls back to ebpf (chose {status.get('method')}, /ready {code})",
                pod.diagnostics())
        c.check(first.get("method") == "core_bpf" and first.get("outcome") == "skipped"
                and "/host/sys/kernel/btf/vmlinux" in (first.get("reason") or ""),
                "/status gives the reason: core_bpf skipped, kernel BTF missing",
                json.dumps(attempts, indent=1))
        c.check(status.get("btf") is None, "/status names no BTF", json.dumps(status.get("btf")))
        term = pod.applied["termination_log"].read_text()
        say(f"no-btf: /status method {status.get('method')}, attempts {json.dumps(attempts)}")
        say(f"no-btf: termination message {term!r}")
        c.check("running ebpf after" in term and "core_bpf" in term and "/host/sys/kernel/btf/vmlinux" in term,
                "the termination message file gives the fallback and its reason", repr(term))
    except Exception:
        c.fail("no-btf pod", traceback.format_exc() + pod.diagnostics())
    finally:
        pod.stop()
        pod.remove()

    # --- a private cgroup namespace, as containerd and CRI-O give every
    # container on cgroup v2 nodes (podman shares the host's on this v1 host):
    # the agent must still find the host's cgroup v2 root, not its own.
    pod = Pod(render(dict(base, http={"port": free_port()})), "cgroupns-private",
              runtime_args=("--cgroupns", "private"))
    try:
        pod.start()
        code, _ = pod.wait_ready()
        status = pod.status()
        cg = (status.get("features") or {}).get("cgroup2") or {}
        c.check(code == 200 and cg.get("ok") and "/host/sys/fs/cgroup" in (cg.get("detail") or ""),
                "in a private cgroup namespace the agent finds the host's cgroup v2 root",
                f"/ready {code}, cgroup2 {cg}\n{pod.diagnostics()}")
        ev = udp_attributed(pod)
        c.check(ev is not None and ev.get("process", {}).get("pid") == os.getpid(),
                "... and its UDP hooks see the host's UDP", json.dumps(ev))
        if busybox:
            cid, ev = container_exec(pod, busybox)
            c.check(ev is not None and ev["process"].get("container_id") == cid[:12],
                    f"... and a second container's exec carries its id {cid[:12]}", json.dumps(ev))
    except Exception:
        c.fail("cgroupns-private pod", traceback.format_exc() + pod.diagnostics())
    finally:
        pod.stop()
        pod.remove()

    # --- each capability the manifest adds is needed: without it, what breaks
    docs = render(base)
    added = pod_spec(docs)["containers"][0]["securityContext"]["capabilities"]["add"]
    for cap in added:
        pod = Pod(render(dict(base, http={"port": free_port()})), f"without-{cap}", without_capability=cap)
        try:
            pod.start()
            code, _ = pod.wait_ready()
            status = pod.status()
            method = status.get("method")
            if cap in ("BPF", "PERFMON"):
                ok, what = method == "proc", "no BPF method runs: auto falls back to proc"
            elif cap == "NET_ADMIN":
                core = next((a for a in status.get("attempts", []) if a["method"] == "core_bpf"), {})
                ok = method == "ebpf" and core.get("outcome") == "failed"
                what = "core_bpf fails (its cgroup socket programs): auto falls back to ebpf"
            elif cap == "SYS_PTRACE":
                exe = old.scraped_exe(pod)
                ok, what = code == 200 and exe is None, "the startup scrape cannot read other processes' exe"
            elif cap == "DAC_READ_SEARCH":
                owner = old.listener_owner(pod)
                ok, what = code == 200 and owner is None, "another user's listener loses its owner"
            else:
                ok, what = False, f"an unexpected capability {cap} (say here what it is for)"
            c.check(ok, f"without CAP_{cap}: {what}",
                    f"/ready {code}, method {method}\n{pod.diagnostics()}")
        except Exception:
            c.fail(f"without-{cap} pod", traceback.format_exc() + pod.diagnostics())
        finally:
            pod.stop()
            pod.remove()


def config_checks(c: Checks, image: str, rendered: dict) -> None:
    """The real agent accepts every rendered config file, and refuses a bad key."""
    work = work_dir("auspex-deploy-config-")
    try:
        # The schema's config keys and the keys the chart sets are exactly
        # the agent's options: neither can drift from the other.
        r = podman("run", "--rm", "--label", LABEL, "--network", "none", *HOST_LIMITS, image,
                   "config", "show", check=False)
        agent_keys = set(yaml.safe_load(r.stdout) or {}) if r.returncode == 0 else set()
        schema = json.loads((CHART / "values.schema.json").read_text())
        chart_keys = set(schema["properties"]["config"]["properties"]) | CHART_OWNED
        c.check(agent_keys == chart_keys, "the chart knows exactly the agent's options",
                f"only the agent's: {sorted(agent_keys - chart_keys)}; only the chart's: "
                f"{sorted(chart_keys - agent_keys)}\n{r.stderr}")
        for label, (_, docs) in rendered.items():
            f = work / "config.yaml"
            text = find(docs, "ConfigMap")["data"]["config.yaml"]
            f.write_text(text)
            r = podman("run", "--rm", "--label", LABEL, "--network", "none", *HOST_LIMITS,
                       "--volume", f"{f}:/etc/auspex/config.yaml:ro", image,
                       "config", "show", "--config", "/etc/auspex/config.yaml", check=False)
            # Every key of the file is in effect, from the file.
            origins = {line.split(":", 1)[0]: line.rsplit("#", 1)[-1].strip()
                       for line in r.stdout.splitlines() if line and not line.startswith("#")}
            wrong = [k for k in yaml.safe_load(text)
                     if origins.get(k) != "config file /etc/auspex/config.yaml"]
            c.check(r.returncode == 0 and not wrong,
                    f"{label}: the agent takes every key of the rendered config file",
                    f"exit {r.returncode}, keys not from the file: {wrong}\n{r.stdout}{r.stderr}")
        (work / "bad.yaml").write_text("method: auto\nring_bufer_size: 8M\n")
        r = podman("run", "--rm", "--label", LABEL, "--network", "none", *HOST_LIMITS,
                   "--volume", f"{work / 'bad.yaml'}:/bad.yaml:ro", image, "run", "--config", "/bad.yaml",
                   check=False)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        say(f"bad config key: exit {r.returncode}, stderr {r.stderr.strip()!r}")
        c.check(r.returncode == 1 and len(lines) == 1 and "ring_bufer_size" in lines[0],
                "a bad config key fails the agent: exit 1, one line naming it",
                f"exit {r.returncode}\n{r.stderr}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chart-only", action="store_true", help="render, lint and validate only")
    opts = parser.parse_args()
    started = time.monotonic()
    c = Checks()
    rendered = chart_checks(c)

    blockers = []
    if opts.chart_only:
        blockers.append("--chart-only")
    if os.geteuid() != 0:
        blockers.append("not root")
    for tool in ("podman", "runc"):
        if not shutil.which(tool):
            blockers.append(f"{tool} is not installed (scripts/setup.sh installs it)")
    if blockers:
        c.skip("image and pod checks", "; ".join(blockers))
    else:
        image = f"localhost/auspex-deploy-test:{RUN_ID}"
        work = None
        busybox = None
        try:
            work = work_dir("auspex-deploy-images-")
            t = time.monotonic()
            # A target dir outside the clone: CI's fresh clones then rebuild
            # only the workspace's own crates, not every dependency (and the
            # vendored libbpf) from cold.
            env = dict(os.environ)
            env.setdefault("AUSPEX_IMAGE_TARGET_DIR", str(Path.home() / ".cache" / "auspex" / "image-target"))
            built = subprocess.run([str(REPO / "scripts" / "image.sh"), image], text=True,
                                   stdout=subprocess.PIPE, env=env)
            if c.check(built.returncode == 0, f"scripts/image.sh built {image} in {time.monotonic() - t:.0f} s",
                       built.stdout):
                say(f"image: {built.stdout.strip()}")
                try:
                    busybox = busybox_image(work)
                except (OSError, subprocess.CalledProcessError) as e:
                    c.skip("container exec", str(e))
                config_checks(c, image, rendered)
                pod_checks(c, image, busybox)
        except NoWorkDir as e:
            c.fail("image and pod checks", str(e))
        finally:
            for leftover in podman("ps", "--all", "--quiet", "--filter", f"label={LABEL}").stdout.split():
                podman("rm", "--force", leftover, check=False)
            for img in (image, busybox):
                if img:
                    podman("rmi", "--force", img, check=False)
            if work:
                shutil.rmtree(work, ignore_errors=True)

    say(f"took {time.monotonic() - started:.0f} s")
    print(f"deploy: {c.passed} passed, {c.failed} failed, {c.skipped} skipped", flush=True)
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
