"""The §12 verdict: the three-valued logic exhaustively against an independent oracle (all completions of the
undecided inputs), and each criterion on hand-built inputs at and around its threshold."""

from __future__ import annotations

import itertools
import math

import pytest

from lorascope.stats.verdict import (INCONCLUSIVE, MET, MISSING, NOT_MET, STATES, criterion_a, criterion_b,
                                     criterion_c, kleene_and, kleene_or, verdict)

T975_DF2 = 4.302652729911275  # t_{0.975, 2}, as tabulated


def oracle(a: str, b: str, c: str) -> str:
    """Decided iff every completion of the unknown inputs (inconclusive/missing → met or not) agrees; an
    undecided result is "missing" iff some missing input is pivotal in some completion."""
    states = {"A": a, "B": b, "C": c}
    unknown = [k for k, v in states.items() if v in (INCONCLUSIVE, MISSING)]

    def value(assign: dict[str, bool]) -> bool:
        v = {k: (states[k] == MET) if k not in assign else assign[k] for k in states}
        return v["A"] and (v["B"] or v["C"])

    completions = [dict(zip(unknown, bits)) for bits in itertools.product((True, False), repeat=len(unknown))]
    outcomes = {value(x) for x in completions}
    if len(outcomes) == 1:
        return MET if outcomes.pop() else NOT_MET
    pivotal = any(value(x) != value({**x, k: not x[k]}) for x in completions for k in unknown
                  if states[k] == MISSING)
    return MISSING if pivotal else INCONCLUSIVE


@pytest.mark.parametrize("a,b,c", list(itertools.product(STATES, repeat=3)))
def test_truth_table(a, b, c):
    crit = {k: {"criterion": k, "stage": s, "state": v, "reason": ""}
            for k, s, v in (("A", "training", a), ("B", "drift", b), ("C", "serve", c))}
    res = verdict(crit["A"], crit["B"], crit["C"])
    assert res["state"] == oracle(a, b, c)
    assert res["missing_stages"] == [f"{x['stage']} (criterion {x['criterion']})" for x in crit.values()
                                     if x["state"] == MISSING]


def test_two_valued_corner_is_boolean_logic():
    for x, y in itertools.product((MET, NOT_MET), repeat=2):
        assert (kleene_and(x, y) == MET) == (x == MET and y == MET)
        assert (kleene_or(x, y) == MET) == (x == MET or y == MET)
    with pytest.raises(ValueError):
        kleene_and(MET, "maybe")


@pytest.mark.parametrize("drops,state", [
    ([3.0, 3.0], MET),                 # CI [3, 3]: the bound equals the margin
    ([3.0 + 1e-6, 3.0 + 1e-6], NOT_MET),
    ([0.0, 0.2, 0.4], MET),            # upper = 0.2 + 4.3027·0.2/√3 = 0.697
    ([2.0, 3.0, 4.0], INCONCLUSIVE),   # mean 3 ≤ 3 but upper 5.48 > 3
    ([1.0, 2.0, 3.0], INCONCLUSIVE),   # upper = 2 + 4.3027/√3 = 4.48
    ([2.9, 3.0, 3.4], NOT_MET),        # mean 3.1 > 3
    ([2.0], INCONCLUSIVE),             # one pair: no CI
    ([4.0], NOT_MET),
    ([-5.0, -4.0, -6.0], MET),         # LoRA better
])
def test_criterion_a(drops, state):
    res = criterion_a(drops, margin=3.0)
    assert res["state"] == state
    if len(drops) == 3:
        mean = sum(drops) / 3
        sd = math.sqrt(sum((d - mean) ** 2 for d in drops) / 2)
        assert res["ci"][1] == pytest.approx(mean + T975_DF2 * sd / math.sqrt(3))


def test_criterion_a_missing():
    assert criterion_a(None)["state"] == MISSING and criterion_a([])["stage"] == "training"


@pytest.mark.parametrize("ft,lora,state", [
    ([1.0, 1.0, 1.0], [0.8, 0.8, 0.8], MET),              # reduction 0.2 (up to rounding) everywhere: CI [0.2, 0.2]
    ([1.0, 1.0, 1.0], [0.81, 0.81, 0.81], NOT_MET),       # 0.19 everywhere
    ([1.0, 1.0, 1.0], [0.55, 0.6, 0.65], MET),            # r = .45, .4, .35: CI 0.4 ± 0.1242 = [0.276, 0.524]
    ([1.0, 1.0, 1.0], [0.5, 0.6, 0.7], INCONCLUSIVE),     # r = .5, .4, .3: CI 0.4 ± 0.2484 = [0.152, 0.648]
    ([1.0, 1.0, 1.0], [0.9, 0.95, 0.85], INCONCLUSIVE),   # r = .1, .05, .15: CI [−0.024, 0.224]
    ([1.0, 1.0, 1.0], [0.9, 0.92, 0.88], NOT_MET),        # r = .1, .08, .12: CI [0.050, 0.150]
    ([2.0, 1.0, 0.5], [1.2, 0.6, 0.3], MET),              # r = 0.4 at every scale of D_FT
    ([0.4], [0.2], INCONCLUSIVE),                         # one pair: no CI
    ([0.0, 1.0], [0.0, 0.5], INCONCLUSIVE),               # D_FT = 0: undefined
])
def test_criterion_b(ft, lora, state):
    res = criterion_b(ft, lora, threshold=0.2)
    assert res["state"] == state
    if len(ft) == 3:  # the CI is the t-CI of the per-pair reductions, by hand
        r = [1 - lo / f for f, lo in zip(ft, lora)]
        mean = sum(r) / 3
        half = T975_DF2 * math.sqrt(sum((x - mean) ** 2 for x in r) / 2) / math.sqrt(3)
        assert res["ci"] == pytest.approx([mean - half, mean + half])


def test_criterion_b_missing():
    assert criterion_b(None, None)["state"] == MISSING and criterion_b([], [])["stage"] == "drift"


BS = (1, 2, 4, 8, 16)


def _cells(*cis):
    return dict(zip(BS, cis))


@pytest.mark.parametrize("cells,state", [
    (_cells(*[(0.1, 0.3)] * 5), MET),                              # every upper bound exactly at 30%
    (_cells(*[(0.1, 0.2)] * 4, (0.25, 0.3000001)), INCONCLUSIVE),  # one CI straddles 30%
    (_cells(*[(0.1, 0.2)] * 4, (0.3000001, 0.5)), NOT_MET),        # one CI entirely above
    (_cells(*[(0.1, 0.2)] * 4, None), INCONCLUSIVE),               # batch 16 not measured
    (_cells(*[(0.1, 0.2)] * 3, (0.2, 0.4), (0.31, 0.4)), NOT_MET), # above beats straddle
    (_cells(*[(0.1, 0.2)] * 4, (float("nan"), 0.2)), INCONCLUSIVE),
])
def test_criterion_c_one_backend(cells, state):
    res = criterion_c({"native": cells}, batch_sizes=BS, threshold=0.3)
    assert res["state"] == state and res["backend"] == ["native"]


def test_criterion_c_over_backends_names_the_backend():
    good, bad, unsure = _cells(*[(0.0, 0.1)] * 5), _cells(*[(0.5, 0.9)] * 5), _cells(*[(0.2, 0.4)] * 5)
    res = criterion_c({"hf-peft": bad, "native": good}, batch_sizes=BS)
    assert res["state"] == MET and res["backend"] == ["native"] and "native" in res["reason"]
    assert criterion_c({"hf-peft": bad, "vllm": bad}, batch_sizes=BS)["state"] == NOT_MET
    res = criterion_c({"hf-peft": bad, "vllm": unsure}, batch_sizes=BS)
    assert res["state"] == INCONCLUSIVE and res["backend"] == ["vllm"]
    assert criterion_c(None)["state"] == MISSING and criterion_c({})["stage"] == "serve"
