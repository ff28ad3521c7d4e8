"""Ray backend: each job is a Ray task with its resources, its role as a *soft* placement, and retries.

Placement (docs/cluster.md explains the choice): a job prefers a node that carries its role's custom
resource (``vm1``/``vm2``/``vm3``, declared at ``ray start --resources``) through
``NodeAffinitySchedulingStrategy(node_id, soft=True, _spill_on_unavailable=True)``: it runs there when
that node has room, spills to any node with free capacity when it is busy, and goes elsewhere when it is
dead. The role resource itself is never *requested*, so it pins nothing.

Fault tolerance: a task whose worker or node dies is retried by Ray (``executor.max_retries``); the retry
runs ``run_job`` again, which resumes from the checkpoints the first attempt left on the shared artifact
root (training resumes from ``checkpoints/``; a job that had finished is recognised as done). Exceptions
raised by a job are *not* retried (``retry_exceptions=False``): ``run_job`` turns them into a failed
outcome, and a deterministic failure (a failed sanity gate, a divergence) would fail again anyway.

Only the driver writes results: tasks return outcome summaries; the driver records them in SQLite.
"""

from __future__ import annotations

from pathlib import Path

from lorascope.config.schema import StudyConfig
from lorascope.study.dag import Job
from lorascope.study.runner import run_job


def _entry(job: dict, cfg: dict, out_dir: str, data_dir: str | None) -> dict:
    from lorascope.logs import quiet_third_party

    quiet_third_party()
    return run_job(job, cfg, out_dir, data_dir=data_dir)


def role_nodes(role: str) -> list[str]:
    """Alive nodes that carry the role's custom resource (in the order Ray lists them)."""
    import ray

    return [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(role, 0) > 0]


def role_strategy(role: str):
    """Soft affinity to the role's node, or None (Ray's default placement) when no alive node has the role."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = role_nodes(role)
    if not nodes:
        return None
    return NodeAffinitySchedulingStrategy(node_id=nodes[0], soft=True, _spill_on_unavailable=True)


class RayBackend:
    """Submit every ready job at once (Ray queues them); report them as they finish."""

    def __init__(self, cfg: StudyConfig, out_dir: Path, *, data_dir: str | None = None,
                 address: str | None = None, max_retries: int | None = None) -> None:
        import ray

        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            # address None starts a local one-node Ray (``executor.address`` unset); "auto" or host:port joins.
            ray.init(address=address or cfg.executor.address, log_to_driver=False)
        self.cfg_json = cfg.model_dump(mode="json")
        self.out_dir, self.data_dir = str(out_dir), data_dir
        self.max_retries = cfg.executor.max_retries if max_retries is None else max_retries
        # A cluster without GPUs (a laptop, CI) runs GPU jobs on CPU rather than leaving them unschedulable.
        self.has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        self.remote = ray.remote(_entry)
        self.refs: dict = {}

    def can_start(self, job: Job) -> bool:
        return True

    def submit(self, job: Job) -> None:
        options = dict(num_cpus=job.num_cpus, num_gpus=job.num_gpus if self.has_gpus else 0,
                       max_retries=self.max_retries, retry_exceptions=False, name=job.name)
        strategy = role_strategy(job.role)
        if strategy is not None:
            options["scheduling_strategy"] = strategy
        ref = self.remote.options(**options).remote(job.to_dict(), self.cfg_json, self.out_dir, self.data_dir)
        self.refs[ref] = job

    def wait(self) -> list[dict]:
        import ray

        ready, _ = ray.wait(list(self.refs), num_returns=1)
        more, _ = ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0)
        outcomes = []
        for ref in dict.fromkeys([*ready, *more]):
            job = self.refs.pop(ref)
            try:
                outcomes.append(ray.get(ref))
            except ray.exceptions.RayError as exc:  # retries exhausted: the node/worker kept dying
                outcomes.append({"name": job.name, "key": job.key, "kind": job.kind, "status": "failed",
                                 "skipped": False, "node": None, "attempt": self.max_retries + 1, "started": None,
                                 "finished": None, "result": None, "traceback": None,
                                 "error": f"lost after {self.max_retries} retries: {type(exc).__name__}: {exc}"})
        return outcomes

    def close(self) -> None:
        import ray

        for ref in list(self.refs):
            ray.cancel(ref, force=True)
        self.refs.clear()
        if self.started_ray:
            ray.shutdown()
