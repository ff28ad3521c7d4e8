"""The Ray executor on a simulated 3-node cluster (one CPU each, custom resources vm1/vm2/vm3).

Fake jobs (sleep + write a file, tests/fake_jobs.py) go through the same code path as the study's jobs:
``engine.run_dag`` → ``executors.execute`` → ``RayBackend`` → ``runner.run_job`` in a Ray worker.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from lorascope.config import load_config
from lorascope.study.dag import Dag, job_record
from lorascope.study.engine import run_dag
from lorascope.study.store import ResultsStore

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
FAKE = "tests.fake_jobs:fake_run"


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    # Ray workers must import tests.fake_jobs: they inherit the raylets' environment.
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), old) if p)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"vm1": 1}})
    nodes = {"vm1": c.head_node, "vm2": c.add_node(num_cpus=1, resources={"vm2": 1}),
             "vm3": c.add_node(num_cpus=1, resources={"vm3": 1})}
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c, nodes
    ray.shutdown()
    c.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def cfg():
    return load_config(REPO / "configs" / "demo.yaml", ["executor.kind=ray", "executor.max_retries=3"])


def _role_of_node(node_id: str) -> str:
    res = next(n["Resources"] for n in ray.nodes() if n["NodeID"] == node_id)
    return next(r for r in ("vm1", "vm2", "vm3") if res.get(r))


def _backend(cfg, out):
    from lorascope.study.executor_ray import RayBackend

    return RayBackend(cfg, out)


def _run(cfg, dag, out, **kw):
    return run_dag(cfg, dag, out, _backend(cfg, out), **kw)


def test_jobs_land_on_their_roles_node(cluster, cfg, tmp_path):
    dag = Dag()  # three at once (one per role), then a chain (one at a time): no node is ever contended
    for i, role in enumerate(("vm1", "vm2", "vm3")):
        dag.add(f"j{i}-{role}", "train", FAKE, params={"task": "t", "value": i, "sleep": 0.5}, role=role)
    prev = ["j0-vm1", "j1-vm2", "j2-vm3"]
    for i, role in enumerate(("vm3", "vm1", "vm2", "vm1"), start=3):
        prev = [dag.add(f"j{i}-{role}", "train", FAKE, params={"task": "t", "value": i}, deps=prev, role=role).name]
    res = _run(cfg, dag, tmp_path)
    assert res.count("completed") == len(dag)
    for job in dag.jobs.values():
        assert _role_of_node(job_record(tmp_path, job.name)["node"]) == job.role, job.name


def test_work_spreads_to_idle_nodes_when_the_roles_node_is_busy(cluster, cfg, tmp_path):
    dag = Dag()
    for i in range(3):
        dag.add(f"ft-{i}", "train", FAKE, params={"task": "t", "value": i, "sleep": 3.0}, role="vm1")
    start = time.monotonic()
    res = _run(cfg, dag, tmp_path)
    elapsed = time.monotonic() - start
    assert res.count("completed") == 3
    roles = {_role_of_node(job_record(tmp_path, f"ft-{i}")["node"]) for i in range(3)}
    assert roles == {"vm1", "vm2", "vm3"}  # a pin to vm1 would have run them one after another (≥ 9 s)
    assert elapsed < 8.5


def test_a_node_removed_mid_study_loses_and_duplicates_nothing(cluster, cfg, tmp_path):
    c, nodes = cluster
    dag = Dag()
    dag.add("data", "train", FAKE, params={"task": "t", "value": 0}, role="vm1")
    names = ["data"]
    for i, role in enumerate(("vm3", "vm3", "vm2", "vm1", "vm3")):
        names.append(dag.add(f"run{i}-{role}", "train", FAKE, params={"task": "t", "value": i + 1, "sleep": 4.0},
                             deps=["data"], role=role).name)
    names.append(dag.add("stats", "train", FAKE, params={"task": "t", "value": 99}, deps=names[1:], role="vm3").name)

    def kill_vm3_when_busy() -> None:
        log = tmp_path / "executions" / "run0-vm3"
        deadline = time.monotonic() + 60
        while not log.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # mid-job
        c.remove_node(nodes["vm3"])

    killer = threading.Thread(target=kill_vm3_when_busy)
    killer.start()
    res = _run(cfg, dag, tmp_path)
    killer.join()
    assert res.count("completed") == len(dag), res.error_message()
    assert job_record(tmp_path, "run0-vm3")["attempt"] >= 2  # it was running on the removed node: retried
    assert len((tmp_path / "executions" / "run0-vm3").read_text().splitlines()) >= 2
    outputs = sorted(p.parent.name for p in (tmp_path / "fake").glob("*/runs/*/results.json"))
    assert outputs == sorted(names)  # every result once, none lost
    with ResultsStore.for_study(tmp_path) as store:
        jobs = store.query("SELECT name, status FROM jobs")
        assert sorted(r["name"] for r in jobs) == sorted(names) and {r["status"] for r in jobs} == {"completed"}
        assert store.count("runs") == len(names)
        assert store.query("SELECT COUNT(DISTINCT run) AS n FROM metrics")[0]["n"] == len(names)
    digests = {n: json.loads((tmp_path / "fake" / "t" / "runs" / n / "results.json").read_text())["digest"]
               for n in names}
    assert digests["stats"] == job_record(tmp_path, "stats")["result"]["digest"]
