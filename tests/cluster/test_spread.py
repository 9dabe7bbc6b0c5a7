"""Issue 30, item 1: on a head (0 CPUs) and two 1-CPU worker nodes, the scoring and preprocessing jobs
run their chunks on both worker nodes (Ray's state API: the node of each chunk's task), and their rows
equal a one-process run's (``--no-ray``), row for row. Run as a user runs them: ``python -m boneage``
with ``RAY_ADDRESS``."""

from __future__ import annotations

import pytest

from tests.cluster.conftest import (
    boneage,
    cache_rows,
    chunk_nodes,
    compare,
    figures,
    finish,
    job_ids,
    preprocess_args,
    score_args,
    score_rows,
)

pytestmark = pytest.mark.integration


def test_scoring_runs_its_chunks_on_both_worker_nodes_with_the_one_process_rows(cluster, films, references,
                                                                               tmp_path):
    before = job_ids(cluster)
    proc = boneage(*score_args(films, tmp_path / "out"), env=cluster.driver_env())
    out = finish(proc)
    assert proc.returncode == 0, out[-3000:]
    where = chunk_nodes(cluster, "_ChunkScorerActor", before)
    diff = compare(score_rows(tmp_path / "out"), score_rows(references["score"]), "path")
    figures("cluster-spread-score", {**where, **diff, "cluster_start_s": cluster.started_s})
    assert len(where["chunks_by_node"]) == 2 and "head" not in where["chunks_by_node"], where
    assert sum(where["chunks_by_node"].values()) == 24, where  # 48 films in chunks of 2
    assert (diff["lost"], diff["duplicated"], diff["changed"], diff["unexpected"]) == (0, 0, 0, 0), diff


def test_preprocessing_runs_its_chunks_on_both_worker_nodes_with_the_one_process_rows(cluster, films,
                                                                                     references, tmp_path):
    before = job_ids(cluster)
    proc = boneage(*preprocess_args(films, tmp_path / "cache"), env=cluster.driver_env())
    out = finish(proc)
    assert proc.returncode == 0, out[-3000:]
    where = chunk_nodes(cluster, "_ChunkProcessor", before)
    diff = compare(cache_rows(tmp_path / "cache"), cache_rows(references["preprocess"]), "id")
    figures("cluster-spread-preprocess", {**where, **diff})
    assert len(where["chunks_by_node"]) == 2 and "head" not in where["chunks_by_node"], where
    assert sum(where["chunks_by_node"].values()) == 24, where
    assert (diff["lost"], diff["duplicated"], diff["changed"], diff["unexpected"]) == (0, 0, 0, 0), diff
