"""The endpoint's own metrics, through Ray's metrics (``ray.serve.metrics``: ``ray.util.metrics`` with the
deployment, replica and application as tags): Ray's dashboard and Prometheus show them beside Serve's own
(requests, latency per route and deployment, queue lengths).

Each replica makes its metrics in its constructor (:class:`ModelMetrics`, :class:`IngressMetrics`). Ray
exports them from every node's metrics port (``ray.nodes()``' ``MetricsExportPort``) as ``ray_<name>``;
:func:`scrape` reads them there, for a benchmark or a test.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterable

BATCH_SIZES = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]  # Histogram boundaries: a bucket per small size
LATENCY_MS = [5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
MODEL_BATCH_SIZE = "boneage_model_batch_size"
MODEL_FILMS = "boneage_model_films"
FILMS_PER_MODEL_CALL = "boneage_films_per_model_call"
FILMS = "boneage_films"


class ModelMetrics:
    """The model replica's: films per forward pass, and the pass's time. Ray's Prometheus export gives a
    histogram's ``_sum`` from its buckets' midpoints, so the films are also counted exactly: the mean batch
    size is ``boneage_model_films`` over ``boneage_model_batch_size_count``."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Histogram

        self.batch_size = Histogram(MODEL_BATCH_SIZE, description="films per forward pass of the network",
                                    boundaries=BATCH_SIZES)
        self.films = Counter(MODEL_FILMS, description="films through the network")
        self.forward_ms = Histogram("boneage_model_forward_ms", description="time of one batch's forward pass (ms)",
                                    boundaries=LATENCY_MS)


class IngressMetrics:
    """The ingress replica's: films answered by outcome, films per call to the model, preparation time and
    the films in preparation."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Gauge, Histogram

        self.films = Counter(FILMS, description="films answered, by outcome: the verdict (ok, warning, refused) "
                                                "or the error code", tag_keys=("outcome",))
        self.films_per_call = Histogram(FILMS_PER_MODEL_CALL, description="films per call from the ingress to "
                                        "the model", boundaries=BATCH_SIZES)
        self.prepare_ms = Histogram("boneage_prepare_ms", description="decoding and preprocessing of one film (ms)",
                                    boundaries=LATENCY_MS)
        self.preparing = Gauge("boneage_films_preparing", description="films in (or waiting for) preparation")

    def answered(self, outcome: str, films: int = 1) -> None:
        """``films`` more answered with ``outcome``."""
        self.films.inc(films, tags={"outcome": outcome})


Sample = tuple[str, dict[str, str], float]


def metrics_urls() -> list[str]:
    """The Prometheus endpoints of the connected Ray cluster's live nodes."""
    import ray

    return [f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
            for node in ray.nodes() if node.get("Alive") and node.get("MetricsExportPort")]


def scrape(urls: Iterable[str] | None = None, prefix: str = "ray_boneage_") -> list[Sample]:
    """The samples whose name starts with ``prefix``, from ``urls`` (default: :func:`metrics_urls`)."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: list[Sample] = []
    for url in metrics_urls() if urls is None else urls:
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        samples += [(s.name, dict(s.labels), s.value) for family in text_string_to_metric_families(text)
                    for s in family.samples if s.name.startswith(prefix)]
    return samples


def total(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """The sum of the samples named ``ray_<name>`` whose labels include ``labels`` (every replica's, every
    node's)."""
    return sum(value for sample, tags, value in samples
               if sample == f"ray_{name}" and all(tags.get(k) == v for k, v in labels.items()))
