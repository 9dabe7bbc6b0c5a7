"""Check KubeRay manifests against KubeRay's CRDs, as the Kubernetes API server would, with no cluster.

    python deploy/kuberay/validate.py                          # every manifest of deploy/kuberay/
    python deploy/kuberay/validate.py my-rayjob.yaml --crds DIR

DIR holds KubeRay's CRDs (``ray.io_{rayclusters,rayjobs,rayservices}.yaml`` of the KubeRay release:
``ray-operator/config/crd/bases/`` at its tag); the default is ``$KUBERAY_CRDS``, else the v1.7.0 copy in
``../shared/schemas/kuberay-v1.7.0`` beside the repository. Exit status 1 when a manifest has a problem.

What is checked, in the order a real cluster would refuse a manifest:

1. **The YAML**: a key given twice is an error (kubectl's strict field validation, its default).
2. **The API server**: the CRD's ``openAPIV3Schema`` of the manifest's version (``ray.io/v1``), read as a
   Kubernetes *structural* schema: an unknown field is an error wherever the schema lists ``properties``
   and does not say ``x-kubernetes-preserve-unknown-fields`` (kubectl's strict validation rejects what
   the server would prune), ``nullable``, ``int32``/``int64``, ``x-kubernetes-list-type`` ``map``/``set``
   (no two entries with the same keys) are applied, and ``metadata`` is checked as an ObjectMeta (name,
   labels, annotations). KubeRay's CRDs embed the core Pod schema in full (no field of a Pod template is
   left unchecked). CEL rules (``x-kubernetes-validations``) are not evaluated: a manifest that sets a
   field carrying one is reported, so that it is not taken as checked.
3. **The KubeRay operator**: a subset of its own validation (``ray-operator/controllers/ray/utils/
   validation.go``): names (a DNS-1035 label of at most 47 characters for a RayJob or RayService),
   containers present, resources given once, replicas within bounds, token authentication's Ray
   version, a RayJob's deadlines and retries, ``runtimeEnvYAML`` and ``serveConfigV2`` being YAML (and
   the latter a Serve config that Ray's own ``ServeDeploySchema`` accepts, when Ray is installed).
4. **The Pods KubeRay would create** (the Kubernetes Pod validation the CRD's schema leaves out):
   container and port names, environment variable names, volume mounts that name a volume, requests
   not above limits, the Ray container first.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import re
import sys
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KUBERAY_VERSION = "v1.7.0"
DEFAULT_CRDS = ROOT.parent / "shared" / "schemas" / f"kuberay-{KUBERAY_VERSION}"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
API_VERSION = "ray.io/v1"
# KubeRay appends 6 characters to a RayJob's or RayService's name for its RayCluster, whose name is at most
# 63 - len("-serve-svc") = 53 (ray-operator/controllers/ray/utils/constant.go).
MAX_NAME = {"RayCluster": 53, "RayJob": 47, "RayService": 47}
RAY_START_RESOURCES = ("num-cpus", "num-gpus", "memory", "resources")

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9]|-(?=[a-z0-9]))*$")
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[numkMGTPE]i?|Ki)?$")
_SUFFIX = {"": 1, "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": 10**3, "M": 10**6,
           "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
           "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}

# metadata of the resource itself: the CRD says only {type: object}; the API server checks it as an ObjectMeta
# (these are the fields a manifest sets; status-like ones such as uid or resourceVersion are the server's).
OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
    },
}


# ----------------------------------------------------------------------------------------------- YAML


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last; kubectl refuses)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_manifests(text: str) -> list[dict]:
    """The documents of a manifest file (empty documents left out); a duplicate key raises."""
    return [doc for doc in yaml.load_all(text, Loader=_StrictLoader) if doc is not None]


# ------------------------------------------------------------------------------------ the API server


def crds_folder(crds: str | Path | None = None) -> Path:
    return Path(crds or os.environ.get("KUBERAY_CRDS") or DEFAULT_CRDS)


@functools.lru_cache(maxsize=8)
def crd_schema(kind: str, crds: str) -> dict:
    """The ``openAPIV3Schema`` of ``kind``'s served version ``v1`` in the CRD file of the folder ``crds``."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((Path(crds) / CRD_FILES[kind]).read_text(), Loader=loader)
    if crd.get("kind") != "CustomResourceDefinition" or crd["spec"]["names"]["kind"] != kind:
        raise ValueError(f"{CRD_FILES[kind]} is not the CustomResourceDefinition of {kind}")
    group = crd["spec"]["group"]
    for version in crd["spec"]["versions"]:
        if f"{group}/{version['name']}" == API_VERSION and version.get("served"):
            return version["schema"]["openAPIV3Schema"]
    raise ValueError(f"{CRD_FILES[kind]} serves no {API_VERSION}")


def structural(schema: dict) -> dict:
    """A JSON Schema that refuses what the API server refuses: unknown fields, and null where not nullable."""
    schema = copy.deepcopy(schema)

    def visit(node):
        if isinstance(node, list):
            for item in node:
                visit(item)
            return
        if not isinstance(node, dict):
            return
        if node.get("nullable") is True:
            if "type" in node:
                node["type"] = [node["type"], "null"]
            elif "anyOf" in node:
                node["anyOf"] = [*node["anyOf"], {"type": "null"}]
        preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
        if node.get("type") == "object" and not preserve and "additionalProperties" not in node:
            # listed properties only; an object with none listed is pruned empty by the server
            node["additionalProperties"] = False
        for key, value in node.items():
            if key == "properties":
                for child in value.values():
                    visit(child)
            elif key in ("items", "additionalProperties", "anyOf", "allOf", "oneOf", "not"):
                visit(value)

    visit(schema)
    return schema


def _list_type(validator, list_type, instance, schema):
    from jsonschema import ValidationError

    if not isinstance(instance, list):
        return
    if list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen = set()
        for item in instance:
            if not isinstance(item, dict):
                continue
            key = tuple(str(item.get(k)) for k in keys)
            if key in seen:
                yield ValidationError(f"duplicate entry for {dict(zip(keys, key, strict=True))} (list-map keys {keys})")
            seen.add(key)
    elif list_type == "set":
        seen = []
        for item in instance:
            if item in seen:
                yield ValidationError(f"duplicate entry {item!r} in a set")
            seen.append(item)


def _cel_rules(validator, rules, instance, schema):
    from jsonschema import ValidationError

    text = "; ".join(rule.get("rule", "") for rule in rules)
    yield ValidationError(f"sets a field with CEL rules this check does not evaluate ({text}): check it by hand")


@functools.lru_cache(maxsize=8)
def _validator(kind: str, crds: str):
    from jsonschema import Draft4Validator, FormatChecker, validators

    schema = structural(crd_schema(kind, crds))
    schema["properties"]["metadata"] = OBJECT_META
    checker = FormatChecker(())

    @checker.checks("int32")
    def _int32(value) -> bool:
        return not isinstance(value, int) or -(2**31) <= value < 2**31

    @checker.checks("int64")
    def _int64(value) -> bool:
        return not isinstance(value, int) or -(2**63) <= value < 2**63

    cls = validators.extend(Draft4Validator, {"x-kubernetes-list-type": _list_type,
                                              "x-kubernetes-validations": _cel_rules})
    return cls(schema, format_checker=checker)


def _path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out.lstrip(".") or "(top)"


def schema_problems(manifest: dict, crds: str | Path | None = None) -> list[str]:
    """What the API server would refuse in a RayCluster, RayJob or RayService, each as 'path: message'."""
    kind = manifest.get("kind")
    if kind not in CRD_FILES:
        return [f"kind: {kind!r} is none of {sorted(CRD_FILES)}"]
    if manifest.get("apiVersion") != API_VERSION:
        return [f"apiVersion: {manifest.get('apiVersion')!r}, not {API_VERSION}"]
    validator = _validator(kind, str(crds_folder(crds)))
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path)))
    problems = [f"{_path(e.absolute_path)}: {e.message}" for e in errors]
    if "status" in manifest:
        problems.append("status: set by the operator, not in a manifest")
    return problems


# ------------------------------------------------------------------------------------------ metadata


def metadata_problems(manifest: dict) -> list[str]:
    kind = manifest.get("kind")
    meta = manifest.get("metadata") or {}
    name = meta.get("name")
    problems = []
    if not name and not meta.get("generateName"):
        problems.append("metadata.name: required")
    if name:
        if kind in MAX_NAME and len(name) > MAX_NAME[kind]:
            problems.append(f"metadata.name: {name!r} is longer than {MAX_NAME[kind]} characters (KubeRay)")
        if not _DNS1035.match(name) or len(name) > 63:
            problems.append(f"metadata.name: {name!r} is not a DNS-1035 label (KubeRay)")
    for key, value in (meta.get("labels") or {}).items():
        problems += _label_problems("metadata.labels", key, value)
    for key in meta.get("annotations") or {}:
        if not _qualified_key(key):
            problems.append(f"metadata.annotations: {key!r} is not a qualified name")
    return problems


def _qualified_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    return (not prefix or (len(prefix) <= 253 and bool(_DNS1123_SUBDOMAIN.match(prefix)))) and \
        len(name) <= 63 and bool(_QUALIFIED_NAME.match(name))


def _label_problems(where: str, key, value) -> list[str]:
    problems = []
    if not isinstance(key, str) or not _qualified_key(key):
        problems.append(f"{where}: label key {key!r} is not a qualified name")
    if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
        problems.append(f"{where}: label value {value!r} of {key!r} is not a valid label value")
    return problems


# ------------------------------------------------------------------------------------------ KubeRay


def _cluster_spec(manifest: dict) -> tuple[str, dict | None]:
    spec = manifest.get("spec") or {}
    key = {"RayCluster": None, "RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}[manifest["kind"]]
    return (f"spec.{key}" if key else "spec"), (spec.get(key) if key else spec)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def groups(manifest: dict) -> Iterator[tuple[str, dict]]:
    """(path, group spec) of the head group and each worker group of the manifest's RayCluster spec."""
    where, cluster = _cluster_spec(manifest)
    if not isinstance(cluster, dict):
        return
    if isinstance(cluster.get("headGroupSpec"), dict):
        yield f"{where}.headGroupSpec", cluster["headGroupSpec"]
    for index, group in enumerate(cluster.get("workerGroupSpecs") or []):
        if isinstance(group, dict):
            yield f"{where}.workerGroupSpecs[{index}]", group


def kuberay_problems(manifest: dict) -> list[str]:
    """A subset of what KubeRay's operator refuses (ValidateRay{Cluster,Job,Service}Spec)."""
    kind = manifest["kind"]
    spec = manifest.get("spec") or {}
    where, cluster = _cluster_spec(manifest)
    problems = []
    if cluster is None:
        if kind == "RayJob" and spec.get("clusterSelector"):
            cluster = {}
        else:
            return [f"{where}: required"]
    names = []
    for path, group in groups(manifest):
        containers = ((group.get("template") or {}).get("spec") or {}).get("containers") or []
        if not containers:
            problems.append(f"{path}.template.spec.containers: at least one container")
        params = group.get("rayStartParams") or {}
        if any(params.get(k) for k in RAY_START_RESOURCES) and group.get("resources"):
            problems.append(f"{path}: resources in both rayStartParams and resources")
        if "labels" in params:
            problems.append(f"{path}.rayStartParams.labels: use the group's labels field")
        for key, value in (group.get("labels") or {}).items():
            problems += _label_problems(f"{path}.labels", key, value)
        if "groupName" in group:
            names.append(group["groupName"])
            low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
            replicas = group.get("replicas", low)
            if isinstance(low, int) and isinstance(high, int) and isinstance(replicas, int) and \
                    not low <= replicas <= high:
                problems.append(f"{path}: replicas {replicas} outside minReplicas {low} .. maxReplicas {high}")
    if len(names) != len(set(names)):
        problems.append(f"{where}.workerGroupSpecs: groupName given twice")
    if (cluster.get("authOptions") or {}).get("mode") == "token":
        version = cluster.get("rayVersion") or ""
        if not version or _version(version) < (2, 52, 0):
            problems.append(f"{where}.rayVersion: token authentication needs Ray 2.52.0 or later, got {version!r}")
    if kind == "RayJob":
        problems += _rayjob_problems(spec)
    if kind == "RayService":
        problems += _rayservice_problems(spec)
    return problems


def _rayjob_problems(spec: dict) -> list[str]:
    problems = []
    shutdown = spec.get("shutdownAfterJobFinishes", False)
    if spec.get("suspend") and not shutdown:
        problems.append("spec.suspend: needs shutdownAfterJobFinishes")
    ttl = spec.get("ttlSecondsAfterFinished", 0)
    if isinstance(ttl, int) and (ttl < 0 or (ttl > 0 and not shutdown)):
        problems.append("spec.ttlSecondsAfterFinished: non-negative, and only with shutdownAfterJobFinishes")
    deadline = spec.get("activeDeadlineSeconds")
    if isinstance(deadline, int) and deadline <= 0:
        problems.append("spec.activeDeadlineSeconds: must be positive")
    retries = spec.get("backoffLimit")
    if isinstance(retries, int) and (retries < 0 or (retries > 0 and spec.get("submissionMode") == "InteractiveMode")):
        problems.append("spec.backoffLimit: non-negative, and 0 in InteractiveMode")
    if spec.get("submissionMode", "K8sJobMode") != "InteractiveMode" and not spec.get("entrypoint"):
        problems.append("spec.entrypoint: required (what the submitter runs)")
    if isinstance(spec.get("runtimeEnvYAML"), str):
        try:
            env = yaml.safe_load(spec["runtimeEnvYAML"])
            if env is not None and not isinstance(env, dict):
                problems.append("spec.runtimeEnvYAML: not a YAML mapping")
        except yaml.YAMLError as error:
            problems.append(f"spec.runtimeEnvYAML: not YAML ({error})")
    return problems


def _rayservice_problems(spec: dict) -> list[str]:
    problems = []
    head = (spec.get("rayClusterConfig") or {}).get("headGroupSpec") or {}
    if ((head.get("headService") or {}).get("metadata") or {}).get("name"):
        problems.append("spec.rayClusterConfig.headGroupSpec.headService.metadata.name: must not be set")
    kind = (spec.get("upgradeStrategy") or {}).get("type")
    if kind is not None and kind not in ("NewClusterWithIncrementalUpgrade", "NewCluster", "None"):
        problems.append(f"spec.upgradeStrategy.type: {kind!r} is none of NewCluster, NewClusterWithIncrementalUpgrade, None")
    delay = spec.get("rayClusterDeletionDelaySeconds")
    if isinstance(delay, int) and delay < 0:
        problems.append("spec.rayClusterDeletionDelaySeconds: must be non-negative")
    text = spec.get("serveConfigV2")
    if text is None:
        problems.append("spec.serveConfigV2: no Serve config (KubeRay deploys nothing)")
        return problems
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as error:
        return [*problems, f"spec.serveConfigV2: not YAML ({error})"]
    if not isinstance(config, dict):
        return [*problems, "spec.serveConfigV2: not a YAML mapping"]
    try:
        from ray.serve.schema import ServeDeploySchema
    except ImportError:  # Ray not installed: the YAML is checked, not Serve's schema
        return problems
    try:
        ServeDeploySchema.model_validate(config)
    except Exception as error:  # noqa: BLE001 (pydantic's ValidationError and Ray's own ValueErrors)
        problems.append(f"spec.serveConfigV2: Ray's ServeDeploySchema refuses it: {error}")
    return problems


# ------------------------------------------------------------------------------------------- the Pods


def quantity(text) -> Decimal:
    """A Kubernetes quantity (``500m``, ``16Gi``, ``1e3``) as a number; ValueError when it is none."""
    match = _QUANTITY.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a quantity")
    number, suffix = match.group(1), match.group(2) or ""
    try:
        value = Decimal(number)
    except InvalidOperation as error:
        raise ValueError(f"{text!r} is not a quantity") from error
    if re.fullmatch(r"[eE][+-]?[0-9]+", suffix):
        return value * Decimal(10) ** int(suffix[1:])
    if suffix not in _SUFFIX:
        raise ValueError(f"{text!r} has an unknown suffix")
    return value * Decimal(_SUFFIX[suffix])


def pod_problems(pod: dict, where: str) -> list[str]:
    """What Kubernetes' Pod validation would refuse in a Pod template's spec (a practical subset)."""
    problems = []
    containers = pod.get("containers") or []
    init = pod.get("initContainers") or []
    volumes = {v.get("name") for v in pod.get("volumes") or [] if isinstance(v, dict)}
    if len(volumes) != len(pod.get("volumes") or []):
        problems.append(f"{where}.volumes: a volume name given twice")
    names = []
    for field, items in (("containers", containers), ("initContainers", init)):
        for index, container in enumerate(items):
            if not isinstance(container, dict):
                continue
            path = f"{where}.{field}[{index}]"
            name = container.get("name", "")
            names.append(name)
            if not isinstance(name, str) or len(name) > 63 or not _DNS1123_LABEL.match(name):
                problems.append(f"{path}.name: {name!r} is not a DNS-1123 label")
            env_names = [e.get("name") for e in container.get("env") or [] if isinstance(e, dict)]
            for env in env_names:
                if not isinstance(env, str) or not _ENV_NAME.match(env):
                    problems.append(f"{path}.env: {env!r} is not a valid variable name")
            for env in container.get("env") or []:
                if isinstance(env, dict) and "value" in env and "valueFrom" in env:
                    problems.append(f"{path}.env: {env.get('name')!r} has both value and valueFrom")
            port_names = [p.get("name") for p in container.get("ports") or [] if isinstance(p, dict) and "name" in p]
            for port in port_names:
                if not isinstance(port, str) or len(port) > 15 or not _IANA_SVC_NAME.match(port):
                    problems.append(f"{path}.ports: name {port!r} is not an IANA service name (15 characters)")
            if len(port_names) != len(set(port_names)):
                problems.append(f"{path}.ports: a port name given twice")
            mounts = [m for m in container.get("volumeMounts") or [] if isinstance(m, dict)]
            for mount in mounts:
                if mount.get("name") not in volumes:
                    problems.append(f"{path}.volumeMounts: {mount.get('name')!r} names no volume of the Pod")
            paths = [m.get("mountPath") for m in mounts]
            if len(paths) != len(set(paths)):
                problems.append(f"{path}.volumeMounts: a mountPath given twice")
            problems += _resource_problems(container.get("resources") or {}, f"{path}.resources")
    if len(names) != len(set(names)):
        problems.append(f"{where}: a container name given twice")
    if containers and isinstance(containers[0], dict) and not containers[0].get("image"):
        problems.append(f"{where}.containers[0].image: the Ray container (KubeRay takes the first) needs an image")
    return problems


def _resource_problems(resources: dict, where: str) -> list[str]:
    problems = []
    values = {}
    for part in ("requests", "limits"):
        for name, value in (resources.get(part) or {}).items():
            try:
                values[part, name] = quantity(value)
            except ValueError as error:
                problems.append(f"{where}.{part}.{name}: {error}")
                continue
            if values[part, name] < 0:
                problems.append(f"{where}.{part}.{name}: negative")
    for (part, name), value in values.items():
        limit = values.get(("limits", name))
        if part == "requests" and limit is not None and value > limit:
            problems.append(f"{where}.requests.{name}: above its limit")
        if part == "requests" and "/" in name and not name.startswith(("requests.", "limits.")) and \
                limit is not None and value != limit:
            problems.append(f"{where}: an extended resource ({name}) needs requests equal to limits")
    return problems


def pod_templates(manifest: dict) -> Iterator[tuple[str, dict]]:
    """(path, Pod spec) of every Pod template of the manifest (groups, and a RayJob's submitter)."""
    for path, group in groups(manifest):
        pod = (group.get("template") or {}).get("spec")
        if isinstance(pod, dict):
            yield f"{path}.template.spec", pod
    submitter = ((manifest.get("spec") or {}).get("submitterPodTemplate") or {}).get("spec")
    if manifest.get("kind") == "RayJob" and isinstance(submitter, dict):
        yield "spec.submitterPodTemplate.spec", submitter


# ---------------------------------------------------------------------------------------------- all


def problems(manifest: dict, crds: str | Path | None = None) -> list[str]:
    """Everything above, for one manifest (a parsed YAML document); empty when it would be accepted."""
    if not isinstance(manifest, dict):
        return ["(top): not a mapping"]
    found = schema_problems(manifest, crds)
    if found:  # the API server refuses it: neither the operator nor a Pod would see it
        return found
    found += metadata_problems(manifest)
    found += kuberay_problems(manifest)
    for path, pod in pod_templates(manifest):
        found += pod_problems(pod, path)
    return found


def check_file(path: Path, crds: str | Path | None = None) -> list[str]:
    """Problems of every Ray resource of a manifest file ('file: kind/name: path: message'); other kinds
    (a ServiceAccount) are left to the API server."""
    try:
        documents = load_manifests(path.read_text())
    except yaml.YAMLError as error:
        return [f"{path.name}: {error}"]
    found = []
    for doc in documents:
        if isinstance(doc, dict) and doc.get("kind") not in CRD_FILES and doc.get("apiVersion") != API_VERSION:
            continue
        name = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}" if isinstance(doc, dict) else "?"
        found += [f"{path.name}: {name}: {p}" for p in problems(doc, crds)]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="manifests (default: every *.yaml of deploy/kuberay/)")
    parser.add_argument("--crds", help=f"folder of KubeRay's CRD files (default: $KUBERAY_CRDS, else {DEFAULT_CRDS})")
    args = parser.parse_args(argv)
    folder = crds_folder(args.crds)
    if not all((folder / name).is_file() for name in CRD_FILES.values()):
        print(f"no KubeRay CRDs in {folder} (--crds, $KUBERAY_CRDS)", file=sys.stderr)
        return 2
    files = args.files or sorted(HERE.glob("*.yaml"))
    found = [p for path in files for p in check_file(path, folder)]
    for line in found:
        print(line)
    print(f"{len(files)} files, {len(found)} problems (KubeRay CRDs: {folder})", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
