"""The README's "Run on a cluster" path, for real and with local stand-ins for the cloud:

- ``cluster.yaml`` passes the validation ``ray up`` runs before it touches AWS;
- a real Ray head (``ray start --head`` on 127.0.0.1, dashboard and Jobs API, a private temp dir) takes
  the three jobs through ``ray job submit`` / ``JobSubmissionClient`` with the project as the job's
  ``working_dir``, and ``serve deploy serve_config.yaml`` through the dashboard;
- every input and output is ``s3://`` on a moto S3 server on 127.0.0.1, reached through the standard
  AWS variables (``AWS_ENDPOINT_URL`` ...) given to the jobs in ``runtime_env.env_vars``, as a cluster's
  nodes have them in their environment: Ray Train's checkpoints (``--storage s3://``) included.
"""

from __future__ import annotations

import copy
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import requests
import yaml

from boneage.network.checkpoint import load_checkpoint
from boneage.predict.predictor import Predictor
from boneage.train.data import in_validation as _in_validation
from tests.helpers import FIXTURES, ROOT

pytestmark = pytest.mark.integration  # a real Ray head and the Jobs API

VENV_BIN = ROOT / ".venv" / "bin"
BUCKET = "hospital"
JOB_TIMEOUT_S = 300
# What the job's working_dir leaves out (also in .rayignore, for `ray job submit --working-dir .`).
EXCLUDES = [".git/", ".venv/", "out/", "*.egg-info/", "__pycache__/", ".pytest_cache/", ".ruff_cache/"]
TRAIN_CONFIG = {"epochs": 2, "batch_size": 4, "epoch_size": 8, "checkpoint_every": 1, "keep_checkpoints": 2,
                "model": {"backbone": "resnet18", "hidden_units": 32},
                "augment": {"rotation_degrees": 0, "translate": 0, "zoom": 0, "contrast": 0, "brightness": 0}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------ cluster.yaml


def test_cluster_yaml_passes_the_validation_ray_up_runs():
    """``ray up`` calls ``prepare_config`` (defaults merged) then ``validate_config`` (Ray's JSON schema)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)

    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu = [t for name, t in types.items() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu, "no GPU worker type"
    assert all(t["min_workers"] == 0 and 1 <= t["max_workers"] <= config["max_workers"] for t in gpu)
    assert sum(t.get("max_workers", 0) for n, t in types.items() if n != config["head_node_type"]) <= \
        config["max_workers"]
    # The project reaches every node and is installed there, with the tested pins.
    assert config["file_mounts"]["/home/ray/boneage"] == "."
    setup = " ".join(config["setup_commands"])
    assert "pip install" in setup and "constraints.txt" in setup and "-e /home/ray/boneage" in setup
    # Object store sized explicitly, and /dev/shm large enough to hold it on every node type.
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert "--object-store-memory=" in " ".join(commands)
        # Serve's fast path on every node, as `boneage serve` asks of its local Ray
        from boneage.serving.environment import ENDPOINT_ENV, SERVE_FAST_PATH

        assert all(f"{name}={value}" in " ".join(commands) for name, value in {**SERVE_FAST_PATH,
                                                                                **ENDPOINT_ENV}.items())
    docker = config["docker"]
    assert docker["image"].startswith("rayproject/ray:") and "gpu" in docker["image"]
    assert any(o.startswith("--shm-size=") for o in docker["head_run_options"])
    assert any(o.startswith("--shm-size=") for o in docker["worker_run_options"])
    for name, node_type in types.items():
        if name != config["head_node_type"] and "docker" in node_type:
            assert any(o.startswith("--shm-size=") for o in node_type["docker"]["worker_run_options"])
    import ray

    assert docker["image"].split(":")[1].startswith(ray.__version__)  # the cluster runs the tested Ray


def test_cluster_yaml_says_what_to_change():
    text = (ROOT / "cluster.yaml").read_text()
    for what in ("region", "InstanceType", "bucket", "IamInstanceProfile", "max_workers"):
        assert any("CHANGE" in line and what.lower() in line.lower() for line in text.splitlines()), what


# ----------------------------------------------------------------------------- the local stand-ins


@dataclass
class S3:
    endpoint: str
    env: dict[str, str]  # the standard AWS variables a node would have

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def keys(self, prefix: str) -> set[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return {o["Key"] for page in pages for o in page.get("Contents", [])}

    def get(self, key: str) -> bytes:
        return self.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    """A moto S3 server on 127.0.0.1 with one bucket: the hospital's object store."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint}
    store = S3(endpoint, env)
    store.client().create_bucket(Bucket=BUCKET)
    try:
        yield store
    finally:
        server.stop()


@dataclass
class Head:
    address: str  # the dashboard's: what ray job submit and serve deploy talk to
    temp_dir: Path
    token: str  # Ray's token authentication: this head's own token, never ~/.ray/auth_token

    def client_env(self) -> dict[str, str]:
        """The environment of a command that talks to this head (ray job submit, serve deploy)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
        return {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def _processes_under(temp_dir: Path) -> list[int]:
    """Our head's processes: every one of them names its private temp dir on its command line."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(temp_dir).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return [p for p in pids if p != os.getpid()]


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    """``ray start --head --block`` on 127.0.0.1 with 2 CPUs, free ports and a private temp dir, started
    from the venv (so job drivers run its Python); stopped by SIGTERM at the end, never by ``ray stop``
    (which would stop every Ray on this machine)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rayh", dir="/tmp"))  # short: Ray's socket paths have a limit
    dashboard = _free_port()
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "RAY_", "BONEAGE_")) and k not in ("VIRTUAL_ENV",)}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0",
               BONEAGE_MODEL="untrained",  # a node's default model; the jobs below name theirs
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    command = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
               "--port", str(_free_port()), "--num-cpus", "2", "--num-gpus", "0", "--temp-dir", str(temp_dir),
               "--include-dashboard=true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
               "--dashboard-agent-listen-port", str(_free_port()), "--dashboard-agent-grpc-port", str(_free_port()),
               "--runtime-env-agent-port", str(_free_port()), "--metrics-export-port", str(_free_port()),
               "--ray-client-server-port", str(_free_port()), "--node-manager-port", str(_free_port()),
               "--object-manager-port", str(_free_port()), "--disable-usage-stats"]
    log = open(temp_dir / "head.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (temp_dir / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the head's Jobs API never answered"
            try:
                if requests.get(f"{address}/api/version", headers={"Authorization": f"Bearer {token}"},
                                timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        yield Head(address, temp_dir, token)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pid in _processes_under(temp_dir):  # anything of ours the head left behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _runtime_env(s3: S3) -> dict:
    return {"working_dir": str(ROOT), "excludes": EXCLUDES, "env_vars": dict(s3.env)}


def _run_job(head: Head, s3: S3, entrypoint: str, expect: str = "SUCCEEDED") -> str:
    """Submit through the Jobs API, wait for the end; returns the job's logs (it must end as ``expect``)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(head.address, headers=head.headers())
    job = client.submit_job(entrypoint=entrypoint, runtime_env=_runtime_env(s3))
    deadline = time.monotonic() + JOB_TIMEOUT_S
    status = client.get_job_status(job)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        if time.monotonic() > deadline:
            client.stop_job(job)
            pytest.fail(f"job {entrypoint!r} still {status} after {JOB_TIMEOUT_S} s:\n"
                        f"{client.get_job_logs(job)[-4000:]}")
        time.sleep(1)
        status = client.get_job_status(job)
    logs = client.get_job_logs(job)
    assert status == JobStatus(expect), f"{entrypoint}: {status}\n{client.get_job_info(job).message}\n{logs[-4000:]}"
    return logs


# --------------------------------------------------------------------------------- the jobs, on S3


def _split_names() -> tuple[list[str], list[str]]:
    """Image names that land 2 in training and 2 in validation under --val-fraction 0.5."""
    names = [f"hand{i:02d}" for i in range(40)]
    val = [n for n in names if _in_validation(n, 0.5)][:2]
    train = [n for n in names if not _in_validation(n, 0.5)][:2]
    return train, val


@pytest.fixture(scope="module")
def cache(head: Head, s3: S3) -> dict:
    """The README's preprocess command, run with the ``ray job submit`` CLI exactly as a user runs it."""
    train, val = _split_names()
    client = s3.client()
    sources = [FIXTURES / "rsna_1377.png", FIXTURES / "rsna_7047.png"]
    rows = []
    for i, name in enumerate(train + val):
        client.upload_file(str(sources[i % 2]), BUCKET, f"rsna/train/{name}.png")
        rows.append({"id": name, "boneage": 60 + 40 * i, "male": i % 2 == 0})
    client.put_object(Bucket=BUCKET, Key="rsna/train.csv", Body=pd.DataFrame(rows).to_csv(index=False).encode())
    command = [str(VENV_BIN / "ray"), "job", "submit", "--address", head.address, "--working-dir", ".",
               "--runtime-env-json", json.dumps({"excludes": EXCLUDES, "env_vars": s3.env}), "--",
               "python", "-m", "ray_jobs.preprocess", f"s3://{BUCKET}/rsna/train",  # the alias of `boneage preprocess`
               "--labels", f"s3://{BUCKET}/rsna/train.csv", "--out", f"s3://{BUCKET}/rsna/cache", "--chunk-size", "2",
               "--actors", "2"]
    proc = subprocess.run(command, cwd=ROOT, env=head.client_env(), capture_output=True, text=True,
                          timeout=JOB_TIMEOUT_S)
    return {"proc": proc, "ids": train + val, "train": train, "val": val}


def test_preprocess_job_via_ray_job_submit_reads_and_writes_s3(cache, s3):
    proc = cache["proc"]
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "inputs 4: kept 4, refused 0, failed 0 (sum 4)" in proc.stdout, proc.stdout[-3000:]
    assert "succeeded" in proc.stdout.lower()
    keys = s3.keys("rsna/cache/")
    assert {"rsna/cache/summary.json", "rsna/cache/_config.json"} <= keys
    assert sum(k.startswith("rsna/cache/kept/part-") for k in keys) == 2  # two chunks of two
    summary = json.loads(s3.get("rsna/cache/summary.json"))
    assert summary["kept"] == 4 and summary["out"] == f"s3://{BUCKET}/rsna/cache"


@pytest.fixture(scope="module")
def trained(cache, head: Head, s3: S3, tmp_path_factory) -> dict:
    """A tiny Ray Train run through the Jobs API: cache, config, checkpoints and model all on S3."""
    assert cache["proc"].returncode == 0, "the preprocessing job failed"
    s3.client().put_object(Bucket=BUCKET, Key="config/tiny.json", Body=json.dumps(TRAIN_CONFIG).encode())
    logs = _run_job(head, s3, f"python -m boneage train --data s3://{BUCKET}/rsna/cache --val-fraction 0.5 "
                              f"--out s3://{BUCKET}/models/boneage.pt --storage s3://{BUCKET}/runs --name tiny "
                              f"--workers 1 --config s3://{BUCKET}/config/tiny.json")
    model = tmp_path_factory.mktemp("model") / "boneage.pt"
    model.write_bytes(s3.get("models/boneage.pt"))
    return {"logs": logs, "model": model}


def test_train_job_via_jobs_api_checkpoints_to_s3_and_writes_the_model_there(trained, cache, s3):
    assert "best validation MAE" in trained["logs"] and f"s3://{BUCKET}/models/boneage.pt" in trained["logs"]
    checkpoint = load_checkpoint(str(trained["model"]))
    assert checkpoint.trained and checkpoint.model.config.backbone == "resnet18"
    assert checkpoint.metadata["val"]["overall"]["n"] == len(cache["val"])
    assert [h["epoch"] for h in checkpoint.metadata["history"]][-1] <= 1
    # Ray Train's storage_path on s3:// (pyarrow's S3 filesystem, endpoint from AWS_ENDPOINT_URL).
    runs = s3.keys("runs/tiny/")
    saved = {k.rsplit("/", 2)[-2] for k in runs if k.endswith("/model.pt")}
    assert saved and all(name.startswith("checkpoint_") for name in saved), sorted(runs)[:20]
    assert any(k.endswith("/state.pt") for k in runs)


@pytest.fixture(scope="module")
def scored(trained, head: Head, s3: S3) -> dict:
    """Bulk scoring through the Jobs API with the model the training job wrote to S3."""
    client = s3.client()
    client.upload_file(str(FIXTURES / "rsna_1377.png"), BUCKET, "pacs/export/a.png")
    client.upload_file(str(FIXTURES / "rsna_7047.png"), BUCKET, "pacs/export/b.png")
    client.put_object(Bucket=BUCKET, Key="pacs/export/broken.png", Body=b"")
    manifest = pd.DataFrame({"path": [f"s3://{BUCKET}/pacs/export/{n}" for n in ("a.png", "b.png", "broken.png")],
                             "sex": ["M", "F", "F"], "chronological_age_months": [120.0, None, None]})
    client.put_object(Bucket=BUCKET, Key="pacs/manifest.csv", Body=manifest.to_csv(index=False).encode())
    logs = _run_job(head, s3, f"python -m boneage score s3://{BUCKET}/pacs/export --manifest "
                              f"s3://{BUCKET}/pacs/manifest.csv --out s3://{BUCKET}/pacs/bone-age "
                              f"--model s3://{BUCKET}/models/boneage.pt --no-progress",
                    expect="FAILED")  # exit status 1: one input (broken.png) failed; the others are committed
    return {"logs": logs, "results": pd.read_parquet(io.BytesIO(s3.get("pacs/bone-age/results.parquet")))}


def test_score_job_via_jobs_api_scores_s3_images_with_the_s3_model(scored, trained):
    assert "inputs 3: scored 2, refused 0, failed 1, skipped 0 (sum 3)" in scored["logs"], scored["logs"][-3000:]
    rows = scored["results"].assign(name=lambda f: [p.rsplit("/", 1)[-1] for p in f["path"]]).set_index("name")
    assert rows.loc["broken.png", "error_code"] == "empty"
    predictor = Predictor.load(str(trained["model"]), device="cpu")
    assert set(rows["model_version"]) == {predictor.version} and rows["model_trained"].all()
    for name, fixture, sex in (("a.png", "rsna_1377.png", "M"), ("b.png", "rsna_7047.png", "F")):
        expected = predictor.predict_files([str(FIXTURES / fixture)], sex=sex)[0]
        assert rows.loc[name, "bone_age_months"] == pytest.approx(expected.bone_age_months, abs=0.011)
    assert rows.loc["a.png", "chronological_age_months"] == 120.0


def test_serve_deploy_runs_serve_config_on_the_cluster_with_the_s3_model(scored, trained, head: Head, s3: S3,
                                                                          tmp_path):
    """``serve deploy serve_config.yaml`` against the head, with a free port, one replica, the model
    on S3 and the AWS variables in the application's runtime_env (as the README says)."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    port = _free_port()
    config["http_options"].update(host="127.0.0.1", port=port)
    app = config["applications"][0]
    app["runtime_env"] = {"env_vars": dict(s3.env)}
    for deployment in app["deployments"]:
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = 1
    network = next(d for d in app["deployments"] if d["name"] == "BoneAgeModel")
    network["user_config"].update(model=f"s3://{BUCKET}/models/boneage.pt", device="cpu")
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = head.client_env()
    proc = subprocess.run([str(VENV_BIN / "serve"), "deploy", str(path), "--address", head.address], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]

    predictor = Predictor.load(str(trained["model"]), device="cpu")
    url = f"http://127.0.0.1:{port}"
    deadline, health = time.monotonic() + 240, None
    while time.monotonic() < deadline:
        try:
            response = requests.get(f"{url}/healthz", timeout=10)
            if response.ok and response.json().get("model_version") == predictor.version:
                health = response.json()
                break
        except requests.RequestException:
            pass
        time.sleep(2)
    assert health is not None, f"the endpoint never served model {predictor.version}"
    assert health["model_trained"] is True
    with open(FIXTURES / "rsna_7047.png", "rb") as f:
        response = requests.post(f"{url}/v1/predict", files={"file": ("x.png", f, "image/png")}, data={"sex": "F"},
                                 timeout=120)
    assert response.status_code == 200, response.text
    expected = predictor.predict_files([str(FIXTURES / "rsna_7047.png")], sex="F")[0]
    assert response.json()["bone_age_months"] == pytest.approx(expected.bone_age_months, abs=0.05)
    subprocess.run([str(VENV_BIN / "serve"), "shutdown", "-y", "--address", head.address], cwd=ROOT, env=env,
                   capture_output=True, timeout=120)
