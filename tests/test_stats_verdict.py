"""The §12 verdict: the three-valued logic exhaustively against an independent oracle (all completions of the
undecided inputs), and each criterion on hand-built inputs at and around its threshold."""

from __future__ import annotations

import itertools
import math

import pytest

from lorascope.stats.verdict import (
    INCONCLUSIVE,
    MET,
    MISSING,
    NOT_ASSESSABLE,
    NOT_MET,
    STATES,
    criterion_a,
    criterion_b,
    criterion_c,
    kleene_and,
    kleene_or,
    study_verdict,
    verdict,
)

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
    ([3.0, 3.0], INCONCLUSIVE),        # CI [3, 3]: zero width is no evidence (issue 13)
    ([0.0, 0.0, 0.0], INCONCLUSIVE),   # identical predictions in every seed pair: "no drop" is not shown
    ([3.0 + 1e-6, 3.0 + 1e-6], NOT_MET),  # not met rests on the point estimate alone
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


def test_zero_width_interval_is_said_to_be_no_evidence():
    res = criterion_a([0.0, 0.0, 0.0])
    assert res["state"] == INCONCLUSIVE and "zero-width" in res["reason"] and res["note"]
    assert res["ci"] == [0.0, 0.0]  # the interval is still reported, as computed


def test_criterion_a_missing():
    assert criterion_a(None)["state"] == MISSING and criterion_a([])["stage"] == "training"


@pytest.mark.parametrize("ft,lora,state", [
    ([1.0, 1.0, 1.0], [0.8, 0.8, 0.8], INCONCLUSIVE),     # 0.2 in every pair: a zero-width interval decides nothing
    ([1.0, 1.0, 1.0], [0.55, 0.6, 0.65], MET),            # log scale: CI [0.258, 0.520]
    ([1.0, 1.0, 1.0], [0.5, 0.6, 0.7], INCONCLUSIVE),     # CI [0.111, 0.634] contains 0.2
    ([1.0, 1.0, 1.0], [0.9, 0.95, 0.85], INCONCLUSIVE),   # CI [−0.031, 0.222]
    ([1.0, 1.0, 1.0], [0.9, 0.92, 0.88], NOT_MET),        # CI [0.049, 0.149]
    ([2.0, 1.0, 0.5], [1.1, 0.6, 0.32], MET),             # ratios .55, .6, .64 at every scale of D_FT
    ([0.4], [0.2], INCONCLUSIVE),                         # one pair: no CI
    ([0.0, 1.0], [0.0, 0.5], INCONCLUSIVE),               # D_FT = 0: undefined
    ([1.0, 1.0], [0.0, 0.5], INCONCLUSIVE),               # D_LoRA = 0: no logarithm
])
def test_criterion_b(ft, lora, state):
    res = criterion_b(ft, lora, threshold=0.2)
    assert res["state"] == state
    if len(ft) == 3 and res["ci"] is not None:
        # by hand: t-interval of the mean log ratio, mapped back by 1 − exp(·) (the ends swap)
        logs = [math.log(lo / f) for f, lo in zip(ft, lora)]
        mean = sum(logs) / 3
        half = T975_DF2 * math.sqrt(sum((x - mean) ** 2 for x in logs) / 2) / math.sqrt(3)
        # rel 1e-9: scipy's t quantile and the tabulated one differ in the 11th digit
        assert res["ci"] == pytest.approx([1 - math.exp(mean + half), 1 - math.exp(mean - half)], rel=1e-9)
        assert res["estimate"] == pytest.approx(1 - math.exp(mean), rel=1e-12)


@pytest.mark.parametrize("ratios", [[0.01, 0.02, 0.5], [0.05, 0.9, 0.99], [0.001, 0.002, 0.003]])
def test_criterion_b_interval_never_passes_100_percent(ratios):
    """The t-interval of the raw reductions left [.., 1] (drift reduction 86.5% [69.1%, 104.0%] in a demo)."""
    res = criterion_b([1.0] * 3, ratios)
    raw = [1 - r for r in ratios]
    m = sum(raw) / 3
    raw_hi = m + T975_DF2 * math.sqrt(sum((x - m) ** 2 for x in raw) / 2) / math.sqrt(3)
    assert raw_hi > 1.0  # the old interval was impossible here
    assert res["ci"][1] < 1.0 and res["ci"][0] < res["estimate"] < res["ci"][1]


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


def test_c_needs_measurements_and_enough_requests():
    assert criterion_c({"native": {1: (0.0, 0.1)}}, batch_sizes=[])["state"] == MISSING  # "met at every batch size []"
    res = criterion_c({"native": {1: None, 4: None}, "vllm": {1: None, 4: None}}, batch_sizes=[1, 4])
    assert res["state"] == MISSING and "no backend completed" in res["reason"]
    cells = {b: {"ci": (0.0, 0.1), "n": 8} for b in (1, 4)}
    res = criterion_c({"native": cells}, batch_sizes=[1, 4])
    assert res["state"] == INCONCLUSIVE and "under-powered: 8 timed requests" in res["reason"]
    cells = {b: {"ci": (0.0, 0.1), "n": 30} for b in (1, 4)}
    assert criterion_c({"native": cells}, batch_sizes=[1, 4])["state"] == MET
    over = {b: {"ci": (0.5, 0.9), "n": 8} for b in (1, 4)}
    assert criterion_c({"native": over}, batch_sizes=[1, 4])["state"] == INCONCLUSIVE  # at most inconclusive


def test_c_reason_names_each_backend_once_and_groups_identical_reasons():
    few = {b: {"ci": (0.0, 0.1), "n": 8} for b in (1, 4)}
    res = criterion_c({"hf-peft": few, "native": few}, batch_sizes=[1, 4])
    assert res["state"] == INCONCLUSIVE and res["backend"] == ["hf-peft", "native"]
    assert res["reason"].startswith("hf-peft, native: under-powered: 8 timed requests")
    assert res["reason"].count("under-powered") == 1
    straddle = {1: {"ci": (0.0, 0.1), "n": 30}, 4: {"ci": (0.2, 0.4), "n": 30}}
    res = criterion_c({"hf-peft": few, "native": straddle}, batch_sizes=[1, 4])
    assert res["reason"].startswith("hf-peft: under-powered") and "; native: CI contains 30%" in res["reason"]


def test_c_flags_unmerged_faster_than_merged():
    """Unmerged does strictly more work: a CI entirely below 0 (the demo's −44% [−64%, −12%]) is a problem."""
    cells = {1: {"ci": (-0.64, -0.12), "n": 30}, 4: {"ci": (0.0, 0.1), "n": 30}}
    res = criterion_c({"native": cells}, batch_sizes=[1, 4])
    assert res["state"] == INCONCLUSIVE and "measurement problem" in res["reason"]
    assert "batch size(s) 1" in res["reason"] and "[" not in res["reason"].split(":")[0]


@pytest.mark.parametrize("a,b,c", list(itertools.product(STATES, repeat=3)))
def test_gate_overrides_every_criterion(a, b, c):
    crit = [{"criterion": k, "stage": st, "state": v, "reason": ""} for k, st, v in
            (("A", "training", a), ("B", "drift", b), ("C", "serve", c))]
    failed = verdict(*crit, gate={"state": NOT_ASSESSABLE, "reason": "LoRA 61.46 does not beat majority 61.46"})
    assert failed["state"] == NOT_ASSESSABLE and "majority" in failed["reason"]
    assert verdict(*crit, gate={"state": MISSING, "reason": "no baselines"})["state"] == MISSING
    assert verdict(*crit, gate={"state": "passed", "reason": ""})["state"] == oracle(a, b, c)


def test_study_verdict_propagates_not_assessable():
    assert study_verdict([MET, NOT_ASSESSABLE]) == NOT_ASSESSABLE
    assert study_verdict([MET, MET]) == MET and study_verdict([MET, NOT_MET]) == NOT_MET
    assert study_verdict([MET, MISSING]) == MISSING and study_verdict([]) == MISSING
