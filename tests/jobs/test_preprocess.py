"""The Ray Data preprocessing job end to end on a real local Ray, real images and real bad files."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from boneage.errors import OutputConflictError
from boneage.files.cache import read_cache, row_image
from boneage.files.images import read_image
from boneage.jobs.preprocess import PreprocessOptions, run
from boneage.jobs.resumable import Output, Resources
from boneage.prepare.stages import PreprocessConfig, preprocess
from tests.helpers import FIXTURES, ROOT, load_grey, make_dicom

pytestmark = pytest.mark.integration  # a real local Ray


def make_archive(folder: Path, shared: Path | None) -> dict[str, str]:
    """Real hand images plus one of each kind of bad file; returns {name: expected outcome}."""
    folder.mkdir(parents=True)
    expected = {}
    for name in ("rsna_1377.png", "rsna_7047.png", "rsna_3107_low_contrast.png"):
        shutil.copy(FIXTURES / name, folder / name)
    # a dim film is a warning, kept for training; noise is not a hand: refused, so never trained on
    expected.update({"rsna_1377": "kept", "rsna_7047": "kept", "rsna_3107_low_contrast": "kept"})
    noise = np.random.default_rng(0).integers(0, 256, (300, 240), dtype=np.uint8)
    cv2.imwrite(str(folder / "noise.png"), noise)
    expected["noise"] = "refused"
    if shared:
        for ident in ("1440", "2110", "7042"):
            shutil.copy(shared / "rsna" / "train" / f"{ident}.png", folder / f"{ident}.png")
            expected[ident] = "kept"
        shutil.copy(shared / "dicom" / "RG3_J2KR.dcm", folder / "extremity_cr.dcm")
        expected["extremity_cr"] = "refused"  # a real non-hand DICOM: decodes, and is refused as not a hand
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes((FIXTURES / "rsna_7047.png").read_bytes()[:5000])
    (folder / "notes.png").write_text("not an image\n")
    (folder / "nopixels.dcm").write_bytes(make_dicom(load_grey(FIXTURES / "rsna_1377.png"), with_pixels=False))
    (folder / "hand_mono1.dcm").write_bytes(make_dicom(255 - load_grey(FIXTURES / "rsna_1377.png"), "MONOCHROME1",
                                                       sex="M"))
    expected.update({"empty": "failed", "truncated": "failed", "notes": "failed", "nopixels": "failed",
                     "hand_mono1": "kept"})
    return expected


def write_labels(path: Path, ids: list[str]) -> None:
    rows = [{"id": i, "boneage": 100 + n, "male": n % 2 == 0} for n, i in enumerate(ids)]
    rows.append({"id": "99999", "boneage": 50, "male": True})  # a label whose image is missing
    pd.DataFrame(rows).to_csv(path, index=False)


def test_job_accounts_for_every_file_and_matches_the_library(tmp_path, local_ray, request):
    shared = Path(str(ROOT.parent / "shared" / "data"))
    shared = shared if (shared / "rsna" / "train.csv").exists() else None
    expected = make_archive(tmp_path / "in", shared)
    labelled = [i for i, outcome in expected.items() if outcome == "kept" and i not in ("hand_mono1", "noise")]
    write_labels(tmp_path / "labels.csv", labelled)
    out = str(tmp_path / "cache")

    summary = run([str(tmp_path / "in")], out, PreprocessOptions(labels=str(tmp_path / "labels.csv"),
                  sample_grid=str(tmp_path / "grid.png"), sample_count=4), Resources(chunk_size=3))

    assert summary["inputs"] == len(expected)
    assert summary["kept"] + summary["refused"] + summary["failed"] == summary["inputs"]
    assert summary["labels_without_image"] == ["99999"]
    assert "hand_mono1" in summary["images_without_label"]
    failed = pd.read_csv(f"{out}/failed.csv")
    refused = pd.read_csv(f"{out}/refused.csv")
    cache = read_cache(out)
    outcome = {**{i: "failed" for i in failed["id"]}, **{i: "refused" for i in refused["id"]},
               **{i: "kept" for i in cache["id"]}}
    assert len(outcome) == len(expected)  # each input in exactly one output
    for ident, want in expected.items():
        assert want == "any" or outcome[str(ident)] == want, (ident, outcome[str(ident)])
    reasons = dict(zip(failed["id"], failed["error"], strict=True))
    assert "empty" in reasons["empty"] and "truncated" in reasons["truncated"]
    assert "not a PNG, JPEG or DICOM" in reasons["notes"] and "no pixel data" in reasons["nopixels"]
    reason = refused.astype({"id": str}).set_index("id")["reason"]
    assert reason["noise"].startswith("not_a_hand"), reason["noise"]  # refused.csv says why
    assert summary["refused_by_reason"]["not_a_hand"] >= 1

    config = PreprocessConfig()
    for _, row in cache.iterrows():  # the cache holds exactly what the library computes for that file
        assert np.array_equal(row_image(row), preprocess(read_image(row["path"]).pixels, config).image), row["id"]
        assert row["config_hash"] == config.config_hash()
    by_id = cache.set_index("id")
    assert by_id.loc["rsna_1377", "boneage"] == 100 + labelled.index("rsna_1377")
    assert bool(by_id.loc["hand_mono1", "male"]) is True  # from the DICOM header
    assert np.isnan(by_id.loc["hand_mono1", "boneage"])
    grid = cv2.imread(str(tmp_path / "grid.png"), cv2.IMREAD_GRAYSCALE)
    assert grid is not None and grid.shape[0] >= 256 and grid.std() > 10

    # each chunk's marker names the Ray node whose actor ran it (one node here)
    markers = [json.loads(p.read_text()) for p in Path(out, "_done").iterdir()]
    assert {m.get("node") for m in markers} == {local_ray.get_runtime_context().get_node_id()}

    # Re-running redoes nothing and loses nothing.
    shards = {p: p.stat().st_mtime_ns for p in Path(out, "kept").iterdir()}
    again = run([str(tmp_path / "in")], out, PreprocessOptions(labels=str(tmp_path / "labels.csv")), Resources(chunk_size=3))
    assert again["skipped_already_done"] == len(expected)
    assert {p: p.stat().st_mtime_ns for p in Path(out, "kept").iterdir()} == shards
    assert (again["kept"], again["refused"], again["failed"]) == (summary["kept"], summary["refused"],
                                                                  summary["failed"])


def test_interrupted_chunk_is_redone_and_its_partial_shard_never_read(tmp_path, local_ray):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("rsna_1377.png", "rsna_7047.png"):
        shutil.copy(FIXTURES / name, folder / name)
    out = tmp_path / "cache"
    run([str(folder)], str(out), resources=Resources(chunk_size=1))
    # Simulate a crash after the shard of one chunk was written but before its marker was:
    marker = sorted((out / "_done").iterdir())[0]
    lost_paths = json.loads(marker.read_text())["paths"]
    marker.unlink()
    (out / "kept" / "part-deadbeef.parquet").write_bytes(b"half a shard")  # a torn write elsewhere
    assert len(read_cache(str(out))) == 1  # readers only trust committed chunks
    summary = run([str(folder)], str(out), resources=Resources(chunk_size=1))
    assert summary["skipped_already_done"] == 1 and summary["kept"] == 2
    assert not (out / "kept" / "part-deadbeef.parquet").exists()
    assert lost_paths[0] in set(read_cache(str(out))["path"])
    assert sorted(read_cache(str(out))["path"]) == sorted(str(p) for p in folder.iterdir())


def test_a_different_config_cannot_mix_into_an_existing_cache(tmp_path, local_ray):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(FIXTURES / "rsna_1377.png", folder)
    loop, other = Resources(use_ray=False), PreprocessOptions(config=PreprocessConfig(clahe_clip_limit=2.0))
    run([str(folder)], str(tmp_path / "cache"), resources=loop)
    with pytest.raises(OutputConflictError, match="another preprocessing config"):
        run([str(folder)], str(tmp_path / "cache"), other, loop)
    summary = run([str(folder)], Output(str(tmp_path / "cache"), overwrite=True), other, loop)
    assert summary["kept"] == 1 and summary["skipped_already_done"] == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_job_reads_and_writes_s3_on_a_loopback_moto_server(tmp_path):
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    env.pop("RAY_ADDRESS", None)
    try:
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
        s3.create_bucket(Bucket="archive")
        for name in ("rsna_1377.png", "rsna_7047.png"):
            s3.upload_file(str(FIXTURES / name), "archive", f"train/{name}")
        s3.put_object(Bucket="archive", Key="train/broken.png", Body=b"")
        s3.put_object(Bucket="archive", Key="train.csv", Body=b"id,boneage,male\nrsna_1377,180,False\n")
        proc = subprocess.run(
            [sys.executable, "-m", "ray_jobs.preprocess", "s3://archive/train", "--labels", "s3://archive/train.csv",
             "--out", "s3://archive/cache", "--chunk-size", "2"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "inputs 3: kept 2, refused 0, failed 1 (sum 3)" in proc.stdout
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="archive", Prefix="cache/")["Contents"]}
        assert {"cache/summary.json", "cache/failed.csv", "cache/refused.csv"} <= keys
        assert sum(k.startswith("cache/kept/part-") for k in keys) == 2  # chunks [broken, 1377], [7047]
        os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                               "AWS_ENDPOINT_URL")})
        import fsspec

        fsspec.filesystem("s3").invalidate_cache()
        cache = read_cache("s3://archive/cache")
        assert sorted(cache["id"]) == ["rsna_1377", "rsna_7047"]
        assert cache.set_index("id").loc["rsna_1377", "boneage"] == 180
        local = preprocess(load_grey(FIXTURES / "rsna_1377.png")).image
        assert np.array_equal(row_image(cache.set_index("id").loc["rsna_1377"]), local)
    finally:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
            os.environ.pop(key, None)
        server.stop()
