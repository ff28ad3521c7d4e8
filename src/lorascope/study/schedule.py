"""The study DAG on G one-GPU nodes: a list schedule like the Ray executor's, its wall clock and GPU-hours, and the
critical path (``lorascope plan``'s per-GPU-count figures).

Rules, those of ``study/executor_ray.py`` and the §14 roles (``study/roles.py``): a GPU job needs one whole GPU;
it prefers its role's node (1 GPU: every role on it; 2 GPUs: vm1 and vm3 on the first, vm2 on the second — the
layout of the issue-15 Ray run; 3 or more: one role each, further nodes have none) and spills to whichever node
frees up first (Ray's soft affinity). Jobs are placed in the order they become ready (ties: topological order), so
no GPU idles while a job is ready: Graham's bound makespan ≤ critical path + work / G holds. CPU jobs (data,
statistics, report) run beside the GPU jobs as soon as they are ready. A node's first job pays its cold start.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lorascope.study.dag import Dag

ROLE_LAYOUTS = {1: {"vm1": 0, "vm2": 0, "vm3": 0}, 2: {"vm1": 0, "vm3": 0, "vm2": 1}}
THREE_ROLES = {"vm1": 0, "vm2": 1, "vm3": 2}


def role_layout(gpus: int) -> dict[str, int]:
    if gpus < 1:
        raise ValueError(f"gpus must be ≥ 1, got {gpus}")
    return ROLE_LAYOUTS.get(gpus, THREE_ROLES)


@dataclass
class Schedule:
    gpus: int
    placement: dict[str, tuple[float, float, int | None]] = field(default_factory=dict)  # job → (start, end, node)
    busy_s: float = 0.0  # GPU seconds, cold starts included

    @property
    def makespan_s(self) -> float:
        return max((end for _, end, _ in self.placement.values()), default=0.0)

    def summary(self) -> dict:
        wall = self.makespan_s
        held = self.gpus * wall
        return {"gpus": self.gpus, "wall_s": wall, "wall_hours": wall / 3600, "gpu_hours_held": held / 3600,
                "gpu_hours_busy": self.busy_s / 3600, "utilisation": self.busy_s / held if held else 0.0}


def simulate(dag: Dag, seconds: dict[str, float], gpus: int, *, cold_start_s: float = 0.0) -> Schedule:
    """Greedy list schedule of ``dag`` (job durations ``seconds``) on ``gpus`` one-GPU nodes (module docstring)."""
    layout = role_layout(gpus)
    free = [0.0] * gpus
    used = [False] * gpus
    order = {j.name: i for i, j in enumerate(dag.topological())}
    pending = dict(order)
    out = Schedule(gpus)
    while pending:
        ready = [(max((out.placement[d][1] for d in dag[n].deps), default=0.0), i, n) for n, i in pending.items()
                 if all(d in out.placement for d in dag[n].deps)]
        t, _, name = min(ready)
        del pending[name]
        job, dur = dag[name], seconds[name]
        if not job.num_gpus:
            out.placement[name] = (t, t + dur, None)
            continue
        pref = layout.get(job.role)
        node = min(range(gpus), key=lambda k: (max(t, free[k]), k != pref, k))
        start = max(t, free[node])
        if not used[node]:
            used[node], dur = True, dur + cold_start_s
        out.placement[name] = (start, start + dur, node)
        free[node] = start + dur
        out.busy_s += dur * job.num_gpus
    return out


def critical_path(dag: Dag, seconds: dict[str, float]) -> float:
    """The longest chain of dependent jobs: no number of GPUs finishes the study sooner."""
    finish: dict[str, float] = {}
    for j in dag.topological():
        finish[j.name] = max((finish[d] for d in j.deps), default=0.0) + seconds[j.name]
    return max(finish.values(), default=0.0)


def assumption_lines(cold_start_s: float) -> list[str]:
    return [
        "Schedule on G GPUs: one job per GPU at a time, each job prefers its role's GPU (1 GPU: all roles; "
        "2 GPUs: vm1 and vm3 on one, vm2 on the other; 3 GPUs: one role each) and otherwise takes the GPU that "
        "frees up first; CPU jobs run beside them; jobs start in the order they become ready.",
        "GPU-hours held = GPUs × wall clock (what G rented GPUs cost); busy = the jobs' own GPU time plus each "
        f"node's cold start ({cold_start_s:.0f} s). The critical path is the longest chain of dependent jobs: no "
        "number of GPUs beats it.",
    ]
