"""The Kubernetes manifests and the Dockerfile, checked offline.

`kustomize build manifests/` (the real kustomize, built by scripts/setup.sh into .cache/bin)
must render objects that the Kubernetes schemas accept (`kubernetes-validate --strict`, whose
schemas ship inside the PyPI package, in .cache/venv) and that keep the sidecar's security
promises. The Dockerfile cannot be built here (no container engine), so its build steps are
held to scripts/setup.sh's: same Debian build packages, same cargo build command.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from conftest import _unavailable
from lab import REPO

KUSTOMIZE = REPO / ".cache" / "bin" / "kustomize"
VENV = REPO / ".cache" / "venv"
VALIDATE = VENV / "bin" / "kubernetes-validate"
# The oldest release a CoreDNS sidecar with CAP_BPF/CAP_PERFMON (kernel 5.8+ nodes) is likely
# to meet, and the newest the package bundles; the schemas ship inside the package.
K8S_VERSIONS = ("1.30.0", "1.37.0")


def _tool(path: Path) -> Path:
    if not path.exists():
        _unavailable(f"{path} missing; scripts/setup.sh installs it")
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, list[dict]]:
    r = subprocess.run([str(_tool(KUSTOMIZE)), "build", str(REPO / "manifests")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    path = tmp_path_factory.mktemp("manifests") / "rendered.yaml"
    path.write_text(r.stdout)
    return path, load_yaml(r.stdout)


def load_yaml(text: str) -> list[dict]:
    # PyYAML comes with kubernetes-validate in the venv; the test runner needs none.
    code = "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))"
    r = subprocess.run([str(_tool(VENV / "bin" / "python")), "-c", code], input=text,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def validate(path: Path, version: str = K8S_VERSIONS[-1]) -> subprocess.CompletedProcess:
    return subprocess.run([str(_tool(VALIDATE)), "--strict", "-k", version, str(path)],
                          capture_output=True, text=True, timeout=120)


def obj(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def sidecar(docs: list[dict]) -> dict:
    containers = obj(docs, "Deployment", "coredns")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "dns-guard")


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_objects_pass_the_kubernetes_schemas(rendered, version):
    path, docs = rendered
    r = validate(path, version)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(" passed for resource ") == len(docs), r.stdout
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == {
        ("ConfigMap", "coredns-dns-guard"), ("ConfigMap", "dns-guard-config"), ("ConfigMap", "dns-guard-lists"),
        ("Deployment", "coredns")}
    assert all(d["metadata"]["namespace"] == "kube-system" for d in docs)


def test_the_validator_rejects_a_broken_object(rendered, tmp_path):
    """Control: a typo in a securityContext field must fail, or the check above proves nothing."""
    path, _ = rendered
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("readOnlyRootFilesystem:", "readOnlyRootFileSystem:", 1))
    r = validate(bad)
    assert r.returncode != 0, r.stdout


# --------------------------------------------------------------------------- security


def test_sidecar_is_not_privileged_and_has_exactly_the_capabilities_it_needs(rendered):
    _, docs = rendered
    sc = sidecar(docs)["securityContext"]
    assert sc.get("privileged") is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sorted(sc["capabilities"]["add"]) == ["BPF", "NET_ADMIN", "PERFMON"]
    pod = obj(docs, "Deployment", "coredns")["spec"]["template"]["spec"]
    assert not pod.get("hostNetwork"), "XDP attaches to the pod's own eth0, never the node's"
    assert not pod.get("hostPID")


def test_sidecar_runs_the_guard_with_probes_and_resources(rendered):
    _, docs = rendered
    c = sidecar(docs)
    assert c["args"] == ["run", "--config", "/etc/dns-guard/guard.yaml"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"]["port"] in ("guard-admin", port["guard-admin"])
    guard_yaml = obj(docs, "ConfigMap", "dns-guard-config")["data"]["guard.yaml"]
    assert f":{port['guard-admin']}" in re.search(r"^metrics:\n\s+listen: (\S+)", guard_yaml, re.M).group(1)
    assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"]

    annotations = obj(docs, "Deployment", "coredns")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port["guard-admin"])


def test_pod_enrichment_uses_the_coredns_service_account(rendered):
    """kubernetes.enrich watches pods with the pod's token, relying on kubeadm's system:coredns
    ClusterRole (list/watch on pods) bound to kube-system/coredns: the pod must keep both."""
    _, docs = rendered
    pod = obj(docs, "Deployment", "coredns")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "coredns"
    assert pod.get("automountServiceAccountToken", True) is not False
    guard_yaml = obj(docs, "ConfigMap", "dns-guard-config")["data"]["guard.yaml"]
    assert re.search(r"^kubernetes:\n\s+enrich: (auto|on)\b", guard_yaml, re.M), guard_yaml


def test_bpffs_is_the_hosts_and_config_comes_from_configmaps(rendered):
    _, docs = rendered
    c = sidecar(docs)
    pod = obj(docs, "Deployment", "coredns")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    bpffs = volumes[mounts["/sys/fs/bpf"]["name"]]
    assert bpffs["hostPath"]["path"] == "/sys/fs/bpf"
    assert not mounts["/sys/fs/bpf"].get("readOnly"), "pins are written there"
    assert volumes[mounts["/etc/dns-guard"]["name"]]["configMap"]["name"] == "dns-guard-config"
    assert volumes[mounts["/etc/dns-guard/lists"]["name"]]["configMap"]["name"] == "dns-guard-lists"
    assert all(m.get("readOnly") for p, m in mounts.items() if p.startswith("/etc/dns-guard"))
    # CoreDNS itself is untouched apart from its Corefile.
    coredns = next(x for x in pod["containers"] if x["name"] == "coredns")
    assert coredns["securityContext"]["capabilities"]["add"] == ["NET_BIND_SERVICE"]


def forwards(corefile: str) -> list[str]:
    return re.findall(r"^\s*forward\s+(.*?)\s*\{?\s*$", corefile, re.M)


def test_corefile_forwards_to_the_sidecar(rendered):
    _, docs = rendered
    pod = obj(docs, "Deployment", "coredns")["spec"]["template"]["spec"]
    coredns = next(x for x in pod["containers"] if x["name"] == "coredns")
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in coredns["volumeMounts"] if m["mountPath"] == "/etc/coredns")
    source = volumes[mount["name"]]["configMap"]
    assert source["name"] == "coredns-dns-guard", source
    assert source.get("items", [{"key": "Corefile", "path": "Corefile"}]) == [{"key": "Corefile", "path": "Corefile"}]
    corefile = obj(docs, "ConfigMap", "coredns-dns-guard")["data"]["Corefile"]
    assert forwards(corefile) == [". 127.0.0.1:5353"], forwards(corefile)
    assert corefile == (REPO / "corefile-examples" / "kubeadm-default.Corefile").read_text()


def test_replicas_without_the_sidecar_keep_their_corefile(rendered):
    """`kubectl apply -k` reaches the running replicas before the rollout replaces them, and
    they have no sidecar: the Corefile they mount must not change under them, neither to
    forward to 127.0.0.1:5353 (CoreDNS's `reload` would pick it up, and every outside name
    would SERVFAIL) nor back to kubeadm's default (a customised one would lose its stub
    domains). So the overlay renders no `coredns` ConfigMap at all."""
    _, docs = rendered
    assert not [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "coredns"]


def test_guard_yaml_passes_dns_guard_check(rendered, tmp_path):
    """The shipped guard.yaml, with list paths pointed at the shipped lists, is a valid config."""
    binary = REPO / "target" / "release" / "dns-guard"
    if not binary.exists():
        _unavailable(f"{binary} is not built (cargo build --release)")
    _, docs = rendered
    lists = obj(docs, "ConfigMap", "dns-guard-lists")["data"]
    for name, content in lists.items():
        (tmp_path / name).write_text(content)
    guard_yaml = obj(docs, "ConfigMap", "dns-guard-config")["data"]["guard.yaml"]
    cfg = tmp_path / "guard.yaml"
    cfg.write_text(guard_yaml.replace("/etc/dns-guard/lists/", f"{tmp_path}/"))
    r = subprocess.run([str(binary), "check", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in lists:
        assert f"/etc/dns-guard/lists/{name}" in guard_yaml


# --------------------------------------------------------------------------- Dockerfile


def _setup_build_packages() -> list[str]:
    text = (REPO / "scripts" / "setup.sh").read_text()
    m = re.search(r"^\s*# build:.*\n\s*(.+)$", text, re.M)
    assert m, "scripts/setup.sh lost its '# build:' package line"
    return m.group(1).split()


def _dockerfile_stages() -> list[list[str]]:
    """Instructions per stage, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    stages: list[list[str]] = []
    for line in text.splitlines():
        if line.strip().upper().startswith("FROM "):
            stages.append([])
        if line.strip() and stages:
            stages[-1].append(" ".join(line.split()))
    return stages


def test_dockerfile_builds_like_setup_sh():
    build, runtime = _dockerfile_stages()
    run = " ".join(i for i in build if i.startswith("RUN "))
    installs = re.search(r"apt-get install ((?:\S+ )+?)&&", run + " &&")
    assert installs, run
    packages = [w for w in installs.group(1).split() if not w.startswith("-")]
    assert packages == _setup_build_packages()

    setup = (REPO / "scripts" / "setup.sh").read_text()
    ours = re.search(r"cargo build ([^&\n]*)", run).group(1).split()
    theirs = re.search(r"\(cd \"\$repo\" && cargo build ([^)]*)\)", setup).group(1).split()
    output_only = {"--quiet", "-q"}
    assert [a for a in ours if a not in output_only] == [a for a in theirs if a not in output_only]

    # Debian 12, as setup.sh, and a Rust no older than the workspace's rust-version.
    base = build[0].split()[1]
    assert base.endswith("-bookworm"), base
    want = re.search(r'rust-version = "(\d+)\.(\d+)"', (REPO / "Cargo.toml").read_text()).groups()
    have = re.match(r"rust:(\d+)\.(\d+)", base).groups()
    assert tuple(map(int, have)) >= tuple(map(int, want)), (have, want)


def test_dockerfile_runtime_ships_only_the_binary_with_the_manifests_args(rendered):
    _, runtime = _dockerfile_stages()
    assert not any(i.startswith("RUN ") for i in runtime), "no package manager work in the runtime stage"
    copies = [i for i in runtime if i.startswith("COPY ")]
    assert copies == ["COPY --from=build /dns-guard /usr/local/bin/dns-guard"], copies
    entry = json.loads(next(i for i in runtime if i.startswith("ENTRYPOINT ")).split(None, 1)[1])
    cmd = json.loads(next(i for i in runtime if i.startswith("CMD ")).split(None, 1)[1])
    assert entry == ["/usr/local/bin/dns-guard"]
    _, docs = rendered
    assert cmd == sidecar(docs)["args"]
