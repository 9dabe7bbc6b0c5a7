"""Scoring straight from a real PACS: Orthanc (Debian's package, with its DICOMweb plugin) on 127.0.0.1."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time

import cv2
import pandas as pd
import pydicom
import pytest
from pydicom.uid import generate_uid

from boneage.files import dicomweb
from boneage.files.images import decode_image
from boneage.predict.predictor import Predictor
from boneage.predict.structured_report import read_report
from tests.helpers import ROOT, SHARED_DATA, Orthanc, hand_instance, orthanc_installed, run_cli

pytestmark = [pytest.mark.integration,  # a real Orthanc PACS
              pytest.mark.skipif(not orthanc_installed(), reason="Orthanc and its DICOMweb plugin are not installed "
                                 "(CI installs them)")]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    shared_data = SHARED_DATA
    if not (shared_data / "rsna" / "val.csv").exists():
        pytest.skip(f"real data folder {shared_data} is absent (it is present in CI)")
    folder = tmp_path_factory.mktemp("orthanc")
    orthanc = Orthanc(folder)
    orthanc.start()
    labels = pd.read_csv(shared_data / "rsna" / "val.csv")
    labels = labels[labels["id"] != 1397].head(4)  # 1397: the one full-size film the film check refuses
    films = {}
    study = generate_uid()
    for (ident, male), photometric, j2k in zip(labels[["id", "male"]].itertuples(index=False),
                                               ("MONOCHROME2", "MONOCHROME1", "MONOCHROME2", "MONOCHROME2"),
                                               (False, False, True, False), strict=True):
        pixels = cv2.imread(str(shared_data / "rsna" / "val" / f"{ident}.png"), cv2.IMREAD_GRAYSCALE)
        films[str(ident)] = hand_instance(pixels, "M" if male else "F", study, photometric, j2k)
    hands = list(films)
    for ident in hands[:3]:
        orthanc.upload(films[ident])
    # a film that is not a hand: the real CR DICOM of an adult's extremity, body part as the modality set it
    orthanc.upload((shared_data / "dicom" / "RG3_UNCR.dcm").read_bytes())
    yield orthanc, films, hands
    orthanc.stop()


def test_a_query_finds_the_hand_instances_and_each_reads_like_its_file(pacs):
    orthanc, films, hands = pacs
    everything = dicomweb.find_instances(orthanc.query)
    assert len(everything) == 4
    only_hands = dicomweb.find_instances(orthanc.query + "?Modality=CR,DX&BodyPartExamined=HAND")
    assert len(only_hands) == 3 and set(only_hands) < set(everything)
    for uri in only_hands:
        rad = decode_image(dicomweb.read_instance(uri), uri)
        assert rad.sex in ("M", "F") and rad.chronological_age_months is not None
    # the J2K instance decodes to the same pixels as the uncompressed original
    originals = {decode_image(films[i], "x.dcm").pixels.tobytes() for i in hands[:3]}
    assert {decode_image(dicomweb.read_instance(u), u).pixels.tobytes() for u in only_hands} == originals


def test_credentials_never_come_from_the_url(pacs):
    orthanc, _, _ = pacs
    with pytest.raises(ValueError, match="BONEAGE_DICOMWEB"):
        dicomweb.find_instances(orthanc.query.replace("http://", "http://doctor:secret@"))


def _reports(orthanc: Orthanc) -> dict[str, dict]:
    """Every SR in the archive: {the SOP Instance UID of the film it reports on: its values and study}."""
    client = dicomweb.client(orthanc.url + "/dicom-web")
    found = {}
    for match in client.search_for_instances(search_filters={"Modality": "SR"}):
        study, series, sop = (match[tag]["Value"][0] for tag in ("0020000D", "0020000E", "00080018"))
        report = client.retrieve_instance(study, series, sop)
        source = report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        film = source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        found[film] = {**read_report(report), "study": report.StudyInstanceUID, "patient": report.PatientID,
                       "sop": report.SOPInstanceUID}
    return found


def _pages(orthanc: Orthanc) -> dict[str, int]:
    """Secondary Capture pages in the archive: {study: how many}, each checked to be an RGB page."""
    client = dicomweb.client(orthanc.url + "/dicom-web")
    counts: dict[str, int] = {}
    for match in client.search_for_instances(search_filters={"Modality": "OT"}):
        study, series, sop = (match[tag]["Value"][0] for tag in ("0020000D", "0020000E", "00080018"))
        page = client.retrieve_instance(study, series, sop)
        assert page.PhotometricInterpretation == "RGB" and page.pixel_array.std() > 10
        counts[study] = counts.get(study, 0) + 1
    return counts


def test_score_from_the_pacs_matches_predict_writes_reports_back_and_a_rerun_adds_no_duplicates(pacs, tmp_path):
    orthanc, films, hands = pacs
    out = tmp_path / "scores"
    query = orthanc.query + "?Modality=CR"
    proc = run_cli("score", query, "--out", str(out), "--no-ray", "--format", "csv", "--write-back",
                   "--secondary-capture")
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out / "results.csv", dtype={"id": str}).set_index("id")
    assert len(table) == 4 and table["bone_age_months"].notna().sum() == 3
    refused = table[table["verdict"] == "refused"]
    assert len(refused) == 1 and "not_a_hand" in refused["reasons"].iloc[0]  # the adult's extremity film
    # the same pixels through `boneage predict`'s Predictor give the same numbers
    predictor = Predictor.load(None, device="cpu")
    reports = _reports(orthanc)
    assert set(reports) == set(table.index)  # one report per film
    for ident in hands[:3]:
        local = tmp_path / f"{ident}.dcm"
        local.write_bytes(films[ident])
        expected = predictor.predict_files([str(local)])[0]
        source = pydicom.dcmread(io.BytesIO(films[ident]))
        row = table.loc[source.SOPInstanceUID]
        assert row["bone_age_months"] == pytest.approx(expected.bone_age_months, abs=0.01)
        assert row["sex"] == expected.sex
        report = reports[source.SOPInstanceUID]
        # in the film's own study, for its patient, with the table's values
        assert (report["study"], report["patient"]) == (source.StudyInstanceUID, source.PatientID)
        assert report["85151-9"] == pytest.approx(expected.bone_age_months, abs=0.01)
        assert report["algorithm"] == "boneage" and report["algorithm_version"] == predictor.version
        for column, code in (("bone_age_minus_chronological_months", "minus-chrono"), ("sds", "sds")):
            if not pd.isna(row[column]):
                assert report[code] == pytest.approx(row[column], abs=0.01)
    assert reports[refused.index[0]]["refused"] == ["not_a_hand"] and "85151-9" not in reports[refused.index[0]]
    # and the one-page report of each film, as an RGB Secondary Capture in the film's own study
    pages = _pages(orthanc)
    assert set(pages) == {r["study"] for r in reports.values()} and sum(pages.values()) == 4
    # a new film arrives; the re-run scores it alone and adds its report, no duplicate of the others
    orthanc.upload(films[hands[3]])
    again = run_cli("score", query, "--out", str(out), "--no-ray", "--format", "csv", "--write-back",
                    "--secondary-capture")
    assert again.returncode == 0, again.stderr
    assert len(pd.read_csv(out / "results.csv")) == 5
    assert "1 to score" in again.stderr + again.stdout
    after = _reports(orthanc)
    assert len(after) == 5 and {k: v["sop"] for k, v in reports.items()} == {k: after[k]["sop"] for k in reports}
    everything = dicomweb.find_instances(orthanc.query + "?Modality=SR")
    assert len(everything) == 5 and sum(_pages(orthanc).values()) == 5


def test_an_archive_that_stops_answering_is_a_clear_error_and_the_next_run_finishes(tmp_path, shared_data):
    """Orthanc killed in the middle of a run (after the first results are committed): a clear error,
    what was scored is kept, and the same command, once Orthanc is back, scores the rest."""
    (tmp_path / "orthanc").mkdir()
    orthanc = Orthanc(tmp_path / "orthanc")
    orthanc.start()
    try:
        labels = pd.read_csv(shared_data / "rsna-100px" / "boneage-training-dataset.csv").head(120)
        for row in labels.itertuples():  # small films: many of them, so the run lasts a few seconds
            pixels = cv2.imread(str(shared_data / "rsna-100px" / "images" / f"{row.id}.png"), cv2.IMREAD_GRAYSCALE)
            orthanc.upload(hand_instance(pixels, "M" if row.male else "F", generate_uid()))
        out = tmp_path / "scores"
        proc = subprocess.Popen([sys.executable, "-m", "boneage", "score", orthanc.query, "--out", str(out),
                                 "--no-ray", "--chunk-size", "1", "--commit-every", "1", "--no-progress"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None and not list(out.glob("parts/*")):
            time.sleep(0.01)
        orthanc.proc.kill()  # mid-run, without warning
        orthanc.proc.wait()
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 3, stderr[-2000:]
        assert "did not answer" in stderr and "run the same command again" in stderr and "Traceback" not in stderr
        orthanc.start()
        again = run_cli("score", orthanc.query, "--out", str(out), "--no-ray", "--format", "csv")
        assert again.returncode == 0, again.stderr
        found = re.search(r"(\d+) inputs: (\d+) already done", again.stderr + again.stdout)
        assert found and found.group(1) == "120" and 0 < int(found.group(2)) < 120  # it stopped in the middle
        table = pd.read_csv(out / "results.csv")
        assert len(table) == 120 and table["bone_age_months"].notna().sum() >= 110
    finally:
        orthanc.stop()


def test_credentials_come_from_the_environment_and_a_refusal_is_a_clear_error(tmp_path, shared_data):
    """An archive that requires HTTP basic: without credentials, a clear error; with them in the
    environment (never on the command line), the films are scored."""
    import os

    (tmp_path / "orthanc").mkdir()
    orthanc = Orthanc(tmp_path / "orthanc", users={"boneage": "s3cret-pw"})
    orthanc.start()
    try:
        pixels = cv2.imread(str(shared_data / "rsna" / "val" / "1392.png"), cv2.IMREAD_GRAYSCALE)
        orthanc.upload(hand_instance(pixels, "M", generate_uid()))
        env = {k: v for k, v in os.environ.items() if not k.startswith("BONEAGE_DICOMWEB")}
        refused = run_cli("score", orthanc.query, "--out", str(tmp_path / "a"), "--no-ray", env=env)
        assert refused.returncode == 3 and "refused access (HTTP 401)" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
        env.update({dicomweb.USER_ENV: "boneage", dicomweb.PASSWORD_ENV: "s3cret-pw"})
        scored = run_cli("score", orthanc.query, "--out", str(tmp_path / "b"), "--no-ray", "--format", "csv", env=env)
        assert scored.returncode == 0, scored.stderr
        assert pd.read_csv(tmp_path / "b" / "results.csv")["bone_age_months"].notna().sum() == 1
        assert "s3cret-pw" not in scored.stderr + scored.stdout
    finally:
        orthanc.stop()


def test_the_ray_data_job_streams_the_instances_and_scores_them_as_the_loop_does(pacs, local_ray, tmp_path):
    from boneage.jobs.resumable import Output, Resources
    from boneage.jobs.score import ScoreOptions, run

    orthanc, _, _ = pacs
    query = orthanc.query + "?BodyPartExamined=HAND"
    on_ray = run([query], Output(str(tmp_path / "ray"), progress=False), ScoreOptions(format="csv"))
    in_loop = run([query], Output(str(tmp_path / "loop"), progress=False), ScoreOptions(format="csv"),
                  Resources(use_ray=False))
    assert on_ray["inputs"] == in_loop["inputs"] >= 3 and on_ray["scored"] == in_loop["scored"] == on_ray["inputs"]
    ray_table = pd.read_csv(tmp_path / "ray" / "results.csv", dtype={"id": str}).set_index("id").sort_index()
    loop_table = pd.read_csv(tmp_path / "loop" / "results.csv", dtype={"id": str}).set_index("id").sort_index()
    pd.testing.assert_series_equal(ray_table["bone_age_months"], loop_table["bone_age_months"])
