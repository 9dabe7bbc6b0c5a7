"""The Ray Data scoring job end to end on a real local Ray, real radiographs and real bad files:
one row per input, reasons for failures, DICOM headers, privacy, and a real kill followed by a re-run."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from boneage.cli import main as cli_main
from boneage.clinical.reference import load_reference, maturity_category
from boneage.errors import ExitCode
from boneage.jobs.resumable import Output, Resources
from boneage.jobs.score import ScoreOptions, run
from boneage.predict.predictor import Predictor
from tests.helpers import FIXTURES, ROOT, SHARED_DATA, load_grey, make_dicom

pytestmark = pytest.mark.integration  # a real local Ray, and the command in child processes

NAME, PATIENT_ID, BIRTH = "Doe^Jane", "PID-0042-XYZ", "20100315"
RG3_IDENTIFIERS = ("CompressedSamples^RG3", "11RG3", "19790408")  # in the real CR file's header
SECRETS = (NAME, "Doe", PATIENT_ID, BIRTH, *RG3_IDENTIFIERS)
MODEL = "untrained"  # a deterministic network: these tests check the pipeline, not the figures


def hand_dicom(png: Path, sex: str, **extra) -> bytes:
    """A real RSNA film wrapped in a DICOM with a full patient header, as a PACS would export it."""
    return make_dicom(load_grey(png), sex=sex, PatientName=NAME, PatientID=PATIENT_ID, PatientBirthDate=BIRTH,
                      **extra)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> dict:
    """Real films, real DICOMs and one of each kind of bad file; a manifest for some of them."""
    if not (SHARED_DATA / "rsna" / "train.csv").exists():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it is present in CI)")
    root = tmp_path_factory.mktemp("score")
    folder = root / "in"
    folder.mkdir()
    for ident in ("1377", "1440", "2110", "7042"):
        shutil.copy(SHARED_DATA / "rsna" / "train" / f"{ident}.png", folder / f"{ident}.png")
    shutil.copy(FIXTURES / "rsna_3107_low_contrast.png", folder / "low_contrast.png")
    shutil.copy(FIXTURES / "rsna_7047.png", folder / "no_manifest_entry.png")
    shutil.copy(SHARED_DATA / "dicom" / "RG3_J2KR.dcm", folder / "cr_extremity.dcm")
    (folder / "hand_header.dcm").write_bytes(hand_dicom(FIXTURES / "rsna_1377.png", "M", StudyDate="20200915"))
    (folder / "hand_manifest.dcm").write_bytes(hand_dicom(FIXTURES / "rsna_7047.png", "F", StudyDate="20200915"))
    rng = np.random.default_rng(7)  # films that are not hands, mixed in: refused, each a row with its reason
    cv2.imwrite(str(folder / "noise.png"), rng.integers(0, 256, (400, 320), dtype=np.uint8))
    cv2.imwrite(str(folder / "blank.png"), np.full((400, 320), 128, np.uint8))
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes((SHARED_DATA / "rsna" / "train" / "1440.png").read_bytes()[:20000])
    (folder / "notes.png").write_text("not an image\n")
    (folder / "nopixels.dcm").write_bytes(make_dicom(load_grey(FIXTURES / "rsna_1377.png"), with_pixels=False))
    manifest = pd.DataFrame(
        [{"path": str(folder / f"{i}.png"), "sex": s, "chronological_age_months": None}
         for i, s in (("1377", "M"), ("1440", "F"), ("7042", "F"), ("low_contrast", "F"), ("noise", "M"),
                      ("blank", "F"))]
        + [{"path": str(folder / "2110.png"), "sex": "M", "chronological_age_months": 300.0}]  # an adult's age
        + [{"path": str(folder / "hand_manifest.dcm"), "sex": "M", "chronological_age_months": 99.5}]
    )
    manifest.to_csv(root / "manifest.csv", index=False)
    return {"root": root, "folder": folder, "manifest": str(root / "manifest.csv"),
            "inputs": sorted(str(p) for p in folder.iterdir())}


@pytest.fixture(scope="module")
def scored(archive, local_ray) -> dict:
    """One uninterrupted Ray run over the archive: the reference the other tests compare with."""
    out = str(archive["root"] / "out")
    summary = run([str(archive["folder"])], Output(out, commit_every=4), ScoreOptions(MODEL, archive["manifest"]),
                  Resources(chunk_size=3, batch_size=4))
    return {"out": out, "summary": summary, "results": pd.read_parquet(f"{out}/results.parquet")}


def by_name(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(name=[Path(p).name for p in frame["path"]]).set_index("name")


def test_every_input_is_one_row_and_failures_carry_reasons(archive, scored):
    results, summary = scored["results"], scored["summary"]
    assert sorted(results["path"]) == archive["inputs"]  # one row per input, no duplicates
    assert summary["inputs"] == len(archive["inputs"]) == summary["scored"] + summary["refused"] + summary["failed"]
    assert summary["not_scored_yet"] == 0 and not summary["interrupted"]
    assert json.loads(Path(scored["out"], "summary.json").read_text())["failed"] == summary["failed"]
    rows = by_name(results)
    codes = {name: rows.loc[name, "error_code"] for name in ("empty.png", "truncated.png", "notes.png",
                                                             "nopixels.dcm", "no_manifest_entry.png")}
    assert codes == {"empty.png": "empty", "truncated.png": "truncated", "notes.png": "unsupported_format",
                     "nopixels.dcm": "no_pixels", "no_manifest_entry.png": "bad_input"}
    assert "sex unknown" in rows.loc["no_manifest_entry.png", "error"]
    assert "no pixel data" in rows.loc["nopixels.dcm", "error"]
    assert summary["failed"] == 5 and summary["errors_by_code"]["bad_input"] == 1
    refused = {Path(p).name for p in results.loc[results["verdict"] == "refused", "path"]}
    assert refused == {"noise.png", "blank.png", "cr_extremity.dcm"} and summary["refused"] == 3
    assert rows.loc[sorted(refused), "bone_age_months"].isna().all()  # withheld, the reason given
    assert rows.loc[sorted(refused), "not_a_hand"].all() and rows.loc["cr_extremity.dcm", "reasons"].startswith("not_a_hand")
    assert summary["by_reason"]["not_a_hand"] == 3 and summary["by_reason"]["low_contrast"] >= 1
    good = results[results["error"].isna() & (results["verdict"] != "refused")]
    assert len(good) == len(archive["inputs"]) - 5 - 3
    assert good["bone_age_months"].notna().all() and good["contrast"].notna().all()
    assert set(results["model_version"]) == {"untrained-seed0"}
    assert results.loc[results["error"].notna(), "bone_age_months"].isna().all()
    # a dim film is a warning: scored, flagged, counted as scored
    assert rows.loc["low_contrast.png", "verdict"] == "warning" and pd.isna(rows.loc["low_contrast.png", "rejection"])
    assert bool(rows.loc["low_contrast.png", "low_contrast"]) and not np.isnan(rows.loc["low_contrast.png",
                                                                                        "bone_age_months"])
    # The job's numbers are exactly what the one prediction path gives in a plain process.
    predictor = Predictor.load(MODEL, device="cpu")
    for name, sex in (("7042.png", "F"), ("hand_header.dcm", None)):
        row = predictor.predict_files([str(archive["folder"] / name)], sex=sex)[0]
        assert rows.loc[name, "bone_age_months"] == pytest.approx(row.bone_age_months, abs=0.011)
        assert rows.loc[name, "contrast"] == pytest.approx(row.quality["contrast"])


def test_sex_and_age_come_from_the_dicom_header_unless_the_manifest_gives_them(scored):
    rows = by_name(scored["results"])
    expected_age = (dt.date(2020, 9, 15) - dt.date(2010, 3, 15)).days / 30.436875
    assert rows.loc["hand_header.dcm", "sex"] == "M"
    assert rows.loc["hand_header.dcm", "chronological_age_months"] == pytest.approx(expected_age, abs=0.01)
    assert rows.loc["hand_manifest.dcm", "sex"] == "M"  # the header says F; the manifest wins
    assert rows.loc["hand_manifest.dcm", "chronological_age_months"] == 99.5
    assert rows.loc["cr_extremity.dcm", "sex"] == "F" and pd.isna(rows.loc["cr_extremity.dcm", "error"])
    assert rows.loc["1440.png", "sex"] == "F" and np.isnan(rows.loc["1440.png", "chronological_age_months"])


def test_clinical_outputs_are_columns_of_the_results(scored):
    results, rows, ref = scored["results"], by_name(scored["results"]), load_reference()
    row = rows.loc["hand_manifest.dcm"]  # the manifest gives 99.5 months and sex M
    assert row["bone_age_minus_chronological_months"] == pytest.approx(row["bone_age_months"] - 99.5, abs=0.011)
    assert row["sds"] == pytest.approx((row["bone_age_months"] - 99.5) / ref.sd(99.5, "M"), abs=0.01)
    # no interval (the model is not calibrated): no SDS range, so no category beyond indeterminate
    assert np.isnan(row["sds_low"]) and np.isnan(row["sds_high"]) and row["reference"] == ref.name
    assert row["maturity_category"] == maturity_category(None, None) == "indeterminate"
    assert np.isnan(rows.loc["1440.png", "sds"]) and pd.isna(rows.loc["1440.png", "maturity_category"])
    adult = rows.loc["2110.png"]  # 300 months: outside the reference, so only the flag, never a comparison
    assert adult["age_out_of_range"] and "age_out_of_range" in adult["reasons"] and adult["verdict"] == "warning"
    assert not np.isnan(adult["bone_age_months"])
    assert np.isnan(adult["sds"]) and np.isnan(adult["bone_age_minus_chronological_months"])
    assert pd.isna(adult["maturity_category"])
    # The untrained model carries no calibration: no interval anywhere, rather than an invented one.
    assert results["bone_age_interval_low"].isna().all() and results["interval_level"].isna().all()


def _all_output_text(out: Path) -> str:
    """Every output file as text; Parquet decoded (its bytes are compressed, so grep would prove nothing)."""
    texts = []
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            texts.append(" ".join(table.column_names) + "\n" + table.to_pandas().to_csv())
        else:
            texts.append(path.read_text(errors="replace"))
    return "\n".join(texts)


def test_patient_identifiers_never_reach_the_outputs(scored):
    text = _all_output_text(Path(scored["out"]))
    for secret in SECRETS:
        assert secret not in text
    assert "patient_name" not in text and "patient_id" not in text


def test_keep_identifiers_writes_them_and_an_out_never_mixes_the_two_settings(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "hand.dcm").write_bytes(hand_dicom(FIXTURES / "rsna_1377.png", "F", StudyDate="20200915"))
    cv2.imwrite(str(folder / "film.png"), load_grey(FIXTURES / "rsna_7047.png"))
    args = ["score", str(folder), "--model", MODEL, "--no-ray", "--format", "csv", "--no-progress"]
    assert cli_main([*args, "--out", str(tmp_path / "kept"), "--keep-identifiers"]) == 1  # a film failed
    assert "inputs 2: scored 1, refused 0, failed 1, skipped 0 (sum 2)" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "kept" / "results.csv", dtype=str).set_index("id")
    assert (table.loc["hand", "patient_name"], table.loc["hand", "patient_id"],
            table.loc["hand", "patient_birth_date"]) == (NAME, PATIENT_ID, BIRTH)
    assert pd.isna(table.loc["film", "patient_name"]) and table.loc["film", "error_code"] == "bad_input"

    assert cli_main([*args, "--out", str(tmp_path / "private")]) == 1
    capsys.readouterr()
    private = _all_output_text(tmp_path / "private")
    assert all(secret not in private for secret in SECRETS) and "patient_name" not in private
    assert cli_main([*args, "--out", str(tmp_path / "kept")]) == ExitCode.FAILED  # as the SystemExit it was
    assert "another --keep-identifiers setting" in capsys.readouterr().err


def test_score_anyway_gives_refused_films_a_number_beside_the_refusal(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "noise.png"), np.random.default_rng(3).integers(0, 256, (300, 300), dtype=np.uint8))
    cv2.imwrite(str(folder / "hand.png"), load_grey(FIXTURES / "rsna_7047.png"))
    args = ["score", str(folder), "--model", MODEL, "--no-ray", "--format", "csv", "--no-progress"]
    pd.DataFrame({"path": [str(folder / "noise.png"), str(folder / "hand.png")], "sex": ["F", "M"]}).to_csv(
        tmp_path / "manifest.csv", index=False)
    for flag, out in (([], "plain"), (["--score-anyway"], "anyway")):
        assert cli_main([*args, "--manifest", str(tmp_path / "manifest.csv"), "--out", str(tmp_path / out), *flag]) == 0
        text = capsys.readouterr().out
        assert "inputs 2: scored 1, refused 1, failed 0, skipped 0 (sum 2)" in text and "not_a_hand 1" in text
    plain = pd.read_csv(tmp_path / "plain" / "results.csv").set_index("id")
    anyway = pd.read_csv(tmp_path / "anyway" / "results.csv").set_index("id")
    assert plain.loc["noise", "verdict"] == anyway.loc["noise", "verdict"] == "refused"
    assert np.isnan(plain.loc["noise", "bone_age_months"]) and not np.isnan(anyway.loc["noise", "bone_age_months"])
    assert plain.loc["hand", "bone_age_months"] == anyway.loc["hand", "bone_age_months"]


def _markers(out: Path) -> int:
    return len(list((out / "_done").glob("*.json"))) if (out / "_done").exists() else 0


def _start_and_stop(command: list[str], env: dict, out: Path, after: int, sig: int) -> tuple[int, str]:
    """Run the job as a separate driver and send ``sig`` once ``after`` markers exist."""
    # SIGINT back to its default in the child: a shell that starts a command in the background ignores it,
    # and Python then never turns it into KeyboardInterrupt (the job would run on to the end)
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while _markers(out) < after:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the job committed nothing in time"
        time.sleep(0.05)
    proc.send_signal(sig)
    log = proc.communicate(timeout=120)[0]
    return proc.returncode, log


def test_a_killed_run_resumes_to_the_same_table_without_duplicates(archive, scored, local_ray):
    out = archive["root"] / "killed"
    env = {**os.environ, "RAY_ADDRESS": local_ray.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "ray_jobs.score", str(archive["folder"]), "--out", str(out), "--model", MODEL,
               "--manifest", archive["manifest"], "--chunk-size", "1", "--batch-size", "1", "--commit-every", "1"]
    code, log = _start_and_stop(command, env, out, 3, signal.SIGKILL)  # a crash: no clean-up of any kind
    assert code == -signal.SIGKILL
    assert all(secret not in log for secret in SECRETS)  # nor in the logs
    killed_at = _markers(out)
    # A Ctrl-C on the re-run: what is scored is committed, the job says so and exits 130.
    code, log = _start_and_stop(command, env, out, killed_at + 1, signal.SIGINT)
    assert code == 130 and "interrupted: re-run the same command" in log, log[-3000:]
    assert all(secret not in log for secret in SECRETS)
    committed = {p: p.stat().st_mtime_ns for p in (out / "parts").iterdir()}
    done_before = sum(len(json.loads(m.read_text())["paths"]) for m in (out / "_done").iterdir())
    assert 4 <= done_before < len(archive["inputs"]), "the stops came too late to test a resumption"
    (out / "parts" / "part-torn.parquet").write_bytes(b"half a part")  # a write the kill interrupted

    first: list[tuple[float, int]] = []  # when the first rows reached the driver, and how many: measured from outside
    started = time.perf_counter()
    summary = run([str(archive["folder"])], Output(str(out), commit_every=4,
                                                   callbacks=[lambda t: first.append((time.perf_counter(), t.num_rows))]),
                  ScoreOptions(MODEL, archive["manifest"]), Resources(chunk_size=3, batch_size=4))
    # a film that had failed before the stop is processed again (retry-failed), the rest are skipped
    assert summary["skipped_already_done"] + summary["retried_failed"] == done_before
    assert summary["processed_this_run"] == len(archive["inputs"]) - summary["skipped_already_done"] \
        == sum(n for _, n in first)
    assert 0 < first[0][0] - started <= summary["seconds"] + 0.1  # start-up, told apart from the work
    assert 1 <= first[0][1] <= 3  # one chunk came first
    assert not (out / "parts" / "part-torn.parquet").exists()
    assert all(p.exists() and p.stat().st_mtime_ns == t for p, t in committed.items())  # never rewritten
    parts = pd.concat([pd.read_parquet(p) for p in (out / "parts").iterdir()])
    assert sorted(set(parts["path"])) == archive["inputs"]  # every input committed
    # exactly once, except a film that had failed and was retried: its old row stays in its (never rewritten)
    # part, the retry's row is newer, and the final table keeps only the newer one
    twice = parts["path"].value_counts()
    assert (twice <= 2).all() and int((twice == 2).sum()) == summary["retried_failed"]
    final = pd.read_parquet(out / "results.parquet")
    reference = scored["results"]
    assert list(final["path"]) == list(reference["path"])
    pd.testing.assert_frame_equal(final.drop(columns=["bone_age_months", "bone_age_years_months"]),
                                  reference.drop(columns=["bone_age_months", "bone_age_years_months"]))
    np.testing.assert_allclose(final["bone_age_months"], reference["bone_age_months"], atol=0.011)


def test_actor_pool_starts_every_actor_at_once_but_never_more_than_the_blocks():
    """Ray Data's autoscaling pool would start one actor and add the rest late (measured: the second of two
    began about 6 s after the first); the pool the jobs use starts them together, still shrinking to one."""
    from boneage.raycluster import actor_pool

    pool = actor_pool(2, 32)
    assert (pool.min_size, pool.max_size, pool.initial_size) == (1, 2, 2)
    assert actor_pool(4, 3).initial_size == 3  # no actor loads a model for nothing
    assert actor_pool(0).initial_size == 1
