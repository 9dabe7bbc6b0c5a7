"""The endpoint's HTTP surface without Ray: the FastAPI app driven as ASGI in this process, the replica a stub.

Issue 31's probes, items 3 (a batch's bytes), 9 (contradictory sex), 10 (error shapes), 11 (browser safety):
what a browser or a careless client sends, and what every answer must carry.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from types import SimpleNamespace

import pytest
from starlette.responses import PlainTextResponse

from boneage.serving.api_key import API_KEY_ENV
from boneage.serving.environment import ENDPOINT_ENV
from boneage.serving.handler import Limits
from boneage.serving.http_guard import OpenHealth, ShapedResponses, proxy_middlewares
from boneage.serving.ingress import api  # the FastAPI app, with the ingress deployment's routes
from boneage.serving.settings import IngressSettings
from boneage.serving.upload_gate import UploadGate
from boneage.serving.webpage import INDEX_HTML, PAGE_CSP

HOST = "127.0.0.1:8000"


class Stub:
    """The ingress replica, without a model: records what reached scoring."""

    def __init__(self) -> None:
        self.settings = IngressSettings()
        self.scored: list[tuple] = []
        self.outcomes: list[str] = []  # what reached the replica's metrics
        self._metrics = SimpleNamespace(answered=lambda outcome, films=1: self.outcomes.extend([outcome] * films))

    async def _score(self, data, sex, age, filename):
        self.scored.append((sex, age))
        return SimpleNamespace(sex=sex)

    # the batch route: read and prepare one file at a time, then the model
    preparing = most_preparing = 0

    async def _model_info(self, refresh=False):
        return {"model_version": "stub", "config_hash": "h"}

    async def _prepare(self, data, sex, age, filename, refresh=False):
        self.preparing += 1
        self.most_preparing = max(self.most_preparing, self.preparing)
        await asyncio.sleep(0.01)
        self.preparing -= 1
        self.scored.append((sex, age))
        return "h", SimpleNamespace(sex=sex, error_code=None)

    async def _to_model_now(self, prepared):
        return prepared[1]

    async def _respond(self, row, heatmap, anyway):
        return {"bone_age_months": 100.0, "bone_age_years_months": "8y 4m", "sex": row.sex, "quality": {},
                "model_version": "stub", "model_trained": False}


@pytest.fixture
def replica(monkeypatch) -> Stub:
    import ray.serve

    stub = Stub()
    monkeypatch.setattr(ray.serve, "get_replica_context", lambda: SimpleNamespace(servable_object=stub))
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    return stub


def call(app, method: str, path: str, headers: dict | None = None, body: bytes = b"") -> tuple[int, dict, bytes]:
    """One request through the ASGI app: (status, headers, body)."""
    headers = {"host": HOST, "content-length": str(len(body)), **(headers or {})}

    async def run() -> list[dict]:
        sent, pending = [], [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            return pending.pop() if pending else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
                 "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
        await app(scope, receive, send)
        return sent

    messages = asyncio.run(run())
    start = next(m for m in messages if m["type"] == "http.response.start")
    answer = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, answer


def multipart(fields: list[tuple], boundary: str = "b0undary") -> tuple[dict, bytes]:
    """``fields``: (name, value) or (name, filename, bytes)."""
    out = b""
    for field in fields:
        if len(field) == 2:
            out += (f'--{boundary}\r\nContent-Disposition: form-data; name="{field[0]}"\r\n\r\n'.encode()
                    + str(field[1]).encode() + b"\r\n")
        else:
            out += (f'--{boundary}\r\nContent-Disposition: form-data; name="{field[0]}"; filename="{field[1]}"\r\n'
                    f"Content-Type: image/png\r\n\r\n").encode() + field[2] + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return {"content-type": f"multipart/form-data; boundary={boundary}"}, out


def post(fields, extra: dict | None = None, path: str = "/v1/predict"):
    headers, body = multipart(fields)
    return call(api, "POST", path, {**headers, **(extra or {})}, body)


def assert_error_shape(status: int, body: bytes, expected_status: int, code: str | None = None) -> dict:
    assert status == expected_status, (status, body)
    answer = json.loads(body)
    assert set(answer) == {"error_code", "error"} and answer["error"], answer
    if code:
        assert answer["error_code"] == code, answer
    return answer


FILM = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


# --- item 9: a sex given twice ------------------------------------------------------------------


def test_two_different_sexes_for_one_film_are_refused(replica):
    status, _, body = post([("file", "a.png", FILM), ("sex", "M"), ("sex", "F")])
    answer = assert_error_shape(status, body, 400, "bad_input")
    assert "'sex'" in answer["error"] and "'M'" in answer["error"] and "'F'" in answer["error"]
    status, _, body = post([("file", "a.png", FILM), ("sex", "F"), ("chronological_age_months", "100"),
                            ("chronological_age_months", "130")])
    assert "chronological_age_months" in assert_error_shape(status, body, 400, "bad_input")["error"]
    assert replica.scored == []  # refused before any scoring


def test_the_same_sex_twice_or_a_blank_beside_it_is_one_sex(replica):
    for fields in ([("sex", "M"), ("sex", "M")], [("sex", "M"), ("sex", "")], [("sex", ""), ("sex", "M")]):
        status, _, body = post([("file", "a.png", FILM), *fields])
        assert status == 200, body
    assert [sex for sex, _ in replica.scored] == ["M", "M", "M"]


# --- item 10: every error is {"error_code", "error"} ------------------------------------------------


def test_parser_and_router_refusals_have_the_documented_shape(replica):
    headers, body = multipart([("file", "a.png", FILM), ("sex", "M")])
    cases = {
        "malformed multipart": ({"content-type": "multipart/form-data; boundary=x"}, b"--y\r\ngarbage", 400),
        "no boundary": ({"content-type": "multipart/form-data"}, body, 400),
        "too many fields": (*multipart([("sex", "M")] * 1001), 400),
        "a file part without a filename": (*multipart([("file", "x" * 1_100_000), ("sex", "M")]), 400),
    }
    for label, (case_headers, case_body, expected) in cases.items():
        status, _, answer = call(api, "POST", "/v1/predict", case_headers, case_body)
        error = assert_error_shape(status, answer, expected)["error"]
        assert "detail" not in error, label
        if label == "a file part without a filename":
            assert "filename" in error and "Part exceeded" not in error, error
    status, headers, answer = call(api, "GET", "/v1/predict")
    assert_error_shape(status, answer, 405, "method_not_allowed")
    assert "POST" in headers["allow"]
    assert_error_shape(*call(api, "GET", "/no/such/route")[::2], 404, "not_found")


def test_serves_plain_text_answers_are_reshaped():
    """Serve answers 503 (over max_queued_requests), 408 and 500 before the ingress runs, in plain text:
    the middleware Serve's HTTP servers get (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH) makes them JSON."""
    assert ENDPOINT_ENV["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == "boneage.serving.http_guard:proxy_middlewares"
    assert [m.cls for m in proxy_middlewares()] == [UploadGate, OpenHealth, ShapedResponses]  # last: outermost
    for status, code in ((503, "unavailable"), (408, "timeout"), (500, "internal_error")):
        serve_answer = ShapedResponses(PlainTextResponse("Request dropped due to backpressure", status_code=status))
        got, headers, body = call(serve_answer, "GET", "/v1/predict")
        assert assert_error_shape(got, body, status, code)["error"] == "Request dropped due to backpressure"
        assert headers["content-type"] == "application/json" and int(headers["content-length"]) == len(body)
        assert headers["x-content-type-options"] == "nosniff"
    ok = ShapedResponses(PlainTextResponse("fine"))
    assert call(ok, "GET", "/")[2] == b"fine"


def test_a_request_whose_model_replica_died_is_told_to_retry(replica, monkeypatch):
    """A replica lost with its node (tests/cluster) raises Ray's actor errors in the ingress: 503 with
    Retry-After, so a client sends the film again, instead of a 500 that says the server is broken."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    for error in (ActorDiedError(), ActorUnavailableError("the replica's node is unreachable", None)):
        async def lost(*_args, error=error, **_kwargs):
            raise error

        monkeypatch.setattr(replica, "_score", lost)
        status, headers, body = post([("file", "a.png", FILM), ("sex", "F")])
        assert assert_error_shape(status, body, 503, "unavailable")["error"].endswith("send it again")
        assert headers["retry-after"] == "1"


# --- item 11: browser safety -----------------------------------------------------------------------


def _directives(csp: str) -> dict[str, str]:
    return {d.split()[0]: d.partition(" ")[2] for d in (p.strip() for p in csp.split(";")) if d}


def test_every_answer_carries_the_browser_safety_headers(replica, monkeypatch):
    answers = {"page": call(api, "GET", "/"), "schema": call(api, "GET", "/openapi.json"),
               "error": post([("file", "a.png", FILM), ("sex", "X"), ("sex", "M")]),
               "404": call(api, "GET", "/docs")}
    monkeypatch.setenv(API_KEY_ENV, "k")
    answers["401"] = call(api, "GET", "/openapi.json")
    for label, (_, headers, _) in answers.items():
        assert headers["x-content-type-options"] == "nosniff", label
        assert headers["cache-control"] == "no-store", label
        assert _directives(headers["content-security-policy"])["frame-ancestors"] == "'none'", label
        assert headers["x-frame-options"] == "DENY", label
    assert answers["401"][0] == 401 and answers["schema"][0] == 200
    assert _directives(answers["schema"][1]["content-security-policy"])["default-src"] == "'none'"


def test_the_pages_policy_allows_exactly_its_own_script_and_style(replica):
    status, headers, body = call(api, "GET", "/")
    assert status == 200 and body.decode() == INDEX_HTML and headers["content-security-policy"] == PAGE_CSP
    policy = _directives(PAGE_CSP)
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", INDEX_HTML, flags=re.DOTALL)
        assert len(blocks) == 1
        digest = base64.b64encode(hashlib.sha256(blocks[0].encode()).digest()).decode()
        assert policy[directive] == f"'sha256-{digest}'"  # no 'unsafe-inline': an injected script does not run
    assert policy["default-src"] == "'none'" and policy["connect-src"] == "'self'"  # fetch("v1/predict")
    assert policy["img-src"] == "data:"  # the heatmap
    # no inline event handlers or style attributes: a hash does not cover them (they would need 'unsafe-hashes')
    assert not re.search(r"<[^>]*\s(on[a-z]+|style)=", INDEX_HTML)


def test_no_cdn_docs_page_and_the_schema_stays(replica):
    for route in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert_error_shape(*call(api, "GET", route)[::2], 404, "not_found")
    status, _, body = call(api, "GET", "/openapi.json")
    assert status == 200 and "/v1/predict" in json.loads(body)["paths"]


@pytest.mark.parametrize("origin, extra, allowed", [
    (None, {}, True),  # curl, PACS: no Origin
    ("http://127.0.0.1:8000", {}, True),  # the page itself
    ("HTTP://127.0.0.1:8000", {}, True),
    ("https://boneage.hospital.example", {"x-forwarded-proto": "https", "x-forwarded-host": "boneage.hospital.example"},
     True),  # behind the hospital's TLS reverse proxy
    ("https://boneage.hospital.example:443", {"x-forwarded-proto": "https",
                                              "x-forwarded-host": "boneage.hospital.example"}, True),
    ("http://evil.example", {}, False),
    ("http://127.0.0.1:8001", {}, False),  # another port is another origin
    ("https://127.0.0.1:8000", {}, False),  # another scheme too
    ("null", {}, False),  # a sandboxed frame or a file: page
    ("not a url", {}, False),
])
def test_a_post_from_another_sites_page_is_refused(replica, origin, extra, allowed):
    headers = {**extra, **({"origin": origin} if origin is not None else {})}
    status, _, body = post([("file", "a.png", FILM), ("sex", "M")], headers)
    if allowed:
        assert status == 200, body
    else:
        assert_error_shape(status, body, 403, "cross_origin")
        assert replica.scored == []


def test_a_foreign_origin_is_refused_even_with_the_browsers_cached_login(replica, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "k")
    basic = base64.b64encode(b"doctor:k").decode()
    status, _, body = post([("file", "a.png", FILM), ("sex", "M")],
                           {"authorization": f"Basic {basic}", "origin": "http://evil.example"})
    assert_error_shape(status, body, 403, "cross_origin")
    status, _, _ = post([("file", "a.png", FILM), ("sex", "M")],
                        {"authorization": f"Basic {basic}", "origin": f"http://{HOST}"})
    assert status == 200
    # a cross-site GET reads nothing a foreign page can see (no CORS), and the page itself is a GET
    assert call(api, "GET", "/", {"authorization": f"Basic {basic}", "origin": "http://evil.example"})[0] == 200


# --- item 3: a batch request's bytes ------------------------------------------------------------------

SMALL = IngressSettings(max_upload_bytes=100_000, max_files=16, max_batch_bytes=250_000)


def _small_limits(replica) -> None:
    replica.settings = SMALL  # what the replica's reconfigure sets; the request guard reads it there too


def test_the_default_batch_budget_is_far_below_sixteen_whole_files():
    limits = Limits()
    assert limits.max_batch_bytes == 64 * 1024 * 1024 <= limits.max_files * limits.max_upload_bytes / 10
    with pytest.raises(ValueError, match="max_batch_bytes"):
        IngressSettings.from_user_config({"max_batch_bytes": 0})
    assert IngressSettings.from_user_config({"max_batch_bytes": 1000}).max_batch_bytes == 1000


def test_a_batch_declared_over_its_budget_is_413_before_a_byte_is_read(replica):
    """Before: 16 x 50 MB + 1 MB (840 MB) was accepted and read whole; now Content-Length over 64 MB + 1 MB
    of form is refused at once."""
    limit = Limits().max_batch_bytes + 1024 * 1024
    headers = {"content-type": "multipart/form-data; boundary=b0undary", "content-length": str(limit + 1)}
    status, _, body = call(api, "POST", "/v1/predict/batch", headers, b"")
    answer = assert_error_shape(status, body, 413, "too_large")
    assert str(limit) in answer["error"] and "all files of a batch together" in answer["error"]
    status, _, body = call(api, "POST", "/v1/predict/batch", {**headers, "content-length": str(16 * 50 * 2**20)})
    assert_error_shape(status, body, 413, "too_large")
    assert replica.scored == []


def test_a_body_longer_than_its_content_length_is_cut_off_while_it_arrives(replica):
    """A client (or a proxy) whose Content-Length understates the body: the bytes are counted as they
    arrive, and past the budget the answer is 413 without reading the rest."""
    head = (b'--b0undary\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n")
    chunks = [head] + [b"x" * 2**20] * 200  # a file part of 200 MB, announced as 1 KB
    consumed = 0

    async def run() -> list[dict]:
        sent = []

        async def receive():
            nonlocal consumed
            consumed += 1
            more = consumed < len(chunks)
            return {"type": "http.request", "body": chunks[consumed - 1], "more_body": more}

        async def send(message):
            sent.append(message)

        headers = {"host": HOST, "content-type": "multipart/form-data; boundary=b0undary", "content-length": "1024"}
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/predict/batch", "raw_path": b"/v1/predict/batch",
                 "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
                 "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
        await api(scope, receive, send)
        return sent

    sent = asyncio.run(run())
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [413]  # one answer, the route's own never sent
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert json.loads(body)["error_code"] == "too_large"
    assert consumed == 66  # the part's head, then 64 MB + 1 MB of form and the chunk that crossed it: never 200
    assert replica.scored == []


def test_batch_files_are_prepared_one_at_a_time_and_past_the_budget_are_413_items(replica):
    _small_limits(replica)
    films = [("files", f"f{i}.png", FILM + b"\0" * 90_000) for i in range(4)]  # 4 x 90 KB: the 3rd is over 250 KB
    status, _, body = post([*films, ("sex", "F")], path="/v1/predict/batch")
    assert status == 200, body
    results = json.loads(body)["results"]
    assert [r["status"] for r in results] == [200, 200, 413, 413]
    assert results[2]["error_code"] == "too_large" and "250000" in results[2]["error"]
    assert replica.most_preparing == 1 and len(replica.scored) == 2  # one file in hand at a time
    assert sorted(replica.outcomes) == ["scored", "scored", "too_large", "too_large"]  # the films metric, by outcome


# --- item 4: the preparing threads bounded by memory as well as by CPUs ------------------------------


def test_preparing_threads_are_bounded_by_the_ingress_memory():
    """Each thread may hold a film at the decoded-size limit (0.9 GB at the worst, measured): a 64-core node
    with the default 3.5 GiB reservation (1 idle, 0.25 of uploads) prepares 2 at once, not 64."""
    from boneage.serving.app import build_app, prepare_threads_for

    assert prepare_threads_for(0, cpus=64, memory_gib=3.5) == 2
    assert prepare_threads_for(0, cpus=2, memory_gib=3.5) == 2
    assert prepare_threads_for(8, cpus=2, memory_gib=9.0) == 8  # asked for, and the memory holds them
    assert prepare_threads_for(0, cpus=64, memory_gib=1.2) == 1  # always one
    ingress = build_app({"memory_gib": 2.0, "prepare_threads": 8, "num_gpus": 0})._bound_deployment
    assert ingress.init_kwargs["prepare_threads"] == 1
    assert ingress.ray_actor_options["memory"] == 2 * 1024**3


def test_the_size_guard_reads_the_limits_the_replica_was_reconfigured_with(replica):
    """No module-global limits: the guard before the multipart parser asks the replica that serves the request."""
    _small_limits(replica)
    headers = {"content-type": "multipart/form-data; boundary=b0undary", "content-length": str(100_000 + 2**20 + 1)}
    status, _, body = call(api, "POST", "/v1/predict", headers, b"")
    assert "a file of at most 100000 bytes" in assert_error_shape(status, body, 413, "too_large")["error"]
    replica.settings = IngressSettings()
    status, _, body = call(api, "POST", "/v1/predict", headers, b"")
    assert status != 413, body
