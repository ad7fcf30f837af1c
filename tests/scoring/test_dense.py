"""The dense model core: the plain-Python reference tracks River's pipeline, the numba kernel is
bit-identical to the reference, both engines give byte-identical outputs end to end."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from salvage.flows import state as st
from salvage.scoring import dense
from salvage.scoring import dense_numba as kernel
from salvage.scoring.baseline import RULES_VERSION, ScoreResult
from salvage.scoring.models import ModelConfig, ModelSet, _pipeline


def _stream(n_inputs: int, steps: int, seed: int):
    """Mixed inputs: gaussians of different scales, a rare flag (clipped), a constant (never
    scaled), huge values (the loss and sigmoid cut-offs), returned and non-returned updates,
    sample weights."""
    rng = random.Random(seed)
    for step in range(steps):
        x = [rng.gauss(j % 3, 1 + j % 4) for j in range(n_inputs)]
        x[1] = 1.0 if rng.random() < 0.01 else 0.0
        x[2] = 2.0
        if step % 997 == 5:
            x[0] = 1e6 * (1 if rng.random() < 0.5 else -1)
        returned = rng.random() < 0.4
        z = x[0] - x[3] + (x[4] if returned else 0.0)
        y = rng.random() < 1 / (1 + math.exp(-max(-30.0, min(30.0, z))))
        yield x, returned, y, rng.choice([1.0, 2.5, 0.3, 10.0])


def _as_dict(x: list[float], returned: bool) -> dict[str, float]:
    d = {f"f{i}": v for i, v in enumerate(x)}
    if returned:
        d |= {f"returned:{k}": v for k, v in list(d.items())}
    return d


def test_the_reference_tracks_rivers_pipeline_on_a_trained_stream():
    """10,000 learning steps: every prediction (made before each step) within 1e-12 of River's
    ``StandardScaler | clip | LogisticRegression(Adam, l2)``; the parameters too."""
    cfg = ModelConfig()
    pipe = _pipeline(cfg)
    n = 12
    S, b = dense.new_state(n), 0.0
    worst = 0.0
    for step, (x, returned, y, w) in enumerate(_stream(n, 10_000, 5)):
        want = pipe.predict_proba_one(_as_dict(x, returned))[True]
        worst = max(worst, abs(dense.predict(S, b, x, returned) - want))
        pipe.learn_one(_as_dict(x, returned), y, w=w)
        rate = dense.adam_rates(cfg.learning_rate, step, 1)[0]
        b = dense.learn(S, b, x, returned, y, w, rate, cfg.l2)
    assert worst < 1e-12, worst
    lr, scaler = pipe["LogisticRegression"], pipe["StandardScaler"]
    assert abs(lr.intercept - b) < 1e-12
    slots = [f"f{i}" for i in range(n)] + [f"returned:f{i}" for i in range(n)]
    for i, k in enumerate(slots):
        assert abs(lr.weights.get(k, 0.0) - S[dense.W][i]) < 1e-12
        assert scaler.counts[k] == S[dense.COUNT][i]
        assert abs(scaler.means[k] - S[dense.MEAN][i]) <= 1e-12 * max(1.0, abs(S[dense.MEAN][i]))
        assert abs(scaler.vars[k] - S[dense.VAR][i]) <= 1e-9 * max(1.0, S[dense.VAR][i])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_numba_kernel_is_bit_identical_to_the_reference(seed):
    """Same predictions (==, not approx), same state bytes, same intercept, whatever the batch
    sizes the learning comes in."""
    n = 9
    rng = random.Random(seed)
    S, b = dense.new_state(n), 0.0
    K, kb = np.zeros((dense.ROWS, 2 * n)), 0.0
    steps = 0
    batch: list = []
    for x, returned, y, w in _stream(n, 3000, seed):
        xa = np.array(x)
        p = dense.predict(S, b, x, returned)
        assert p == kernel.predict_one(K, kb, xa, returned)
        assert [p, p] == list(kernel.predict_pair(K, kb, K, kb, xa, returned))
        batch.append((x, returned, y, w))
        if rng.random() < 0.3:  # learn what has accumulated, as labels arrive
            rates = dense.adam_rates(0.001, steps, len(batch))
            steps += len(batch)
            X, R, Y, W = (list(c) for c in zip(*batch, strict=True))
            b = dense.learn_batch(S, b, X, R, Y, W, rates, 1e-3)
            kb = kernel.learn_batch(
                K, kb, np.array(X), np.array(R), np.array(Y), np.array(W), np.array(rates), 1e-3
            )
            batch = []
            assert b == kb
            assert np.array(S).tobytes() == K.tobytes()
    X = np.array([x for x, *_ in _stream(n, 50, seed + 10)])
    R = np.array([r for _, r, *_ in _stream(n, 50, seed + 10)])
    assert list(kernel.predict_batch(K, kb, X, R)) == dense.predict_batch(S, b, X.tolist(), R)


RULES = ScoreResult(0.5, 0.5, RULES_VERSION)


def _drive(ms: ModelSet, seed: int, n: int = 400) -> list:
    """Score and label a stream of orders; returns every score and model event."""
    rng = random.Random(seed)
    out: list = []
    for i in range(n):
        y = rng.random() < 0.5
        x = {
            "s": (1.0 if y else -1.0) + rng.gauss(0, 0.7),
            "order_value": rng.lognormvariate(4, 1),
            "return_requested": float(rng.random() < 0.5),
        }
        rules = ScoreResult(rng.random(), rng.random(), RULES_VERSION)
        order = f"o{i}"
        out.append(ms.score(order, 2 * i, x, rules, returned=bool(x["return_requested"])))
        facts = {"outcome": "kept" if y else "refund", "return_requested_at": 1}
        out.append(ms.label(order, 2 * i + 1, facts | {"abuse_flags": ["w"] if y else []}))
    return out


def test_both_engines_give_the_same_model_set():
    python = ModelSet(ModelConfig(min_labels=50, engine="python"))
    numba = ModelSet(ModelConfig(min_labels=50, engine="numba"))
    assert _drive(python, 4) == _drive(numba, 4)
    assert python.summary() == numba.summary()
    assert _params(python) == _params(numba)
    assert any(python.export()["recoverability"]["weights"].values())  # it learned


def _params(ms: ModelSet) -> dict:
    """The export without the config (which names the engine)."""
    return {k: {f: v for f, v in d.items() if f != "config"} for k, d in ms.export().items()}


def test_the_model_state_is_dense_arrays_and_survives_the_codec_across_engines():
    """The codec stores the arrays (msgpack, no pickled River model); a state written by one
    engine loads into the other and both continue byte-identically."""
    from salvage.flows.stages import ModelStage, StageConfig

    def cfg_of(engine: str) -> StageConfig:
        model = ModelConfig(min_labels=50, engine=engine)
        return StageConfig(case_shards=1, cust_shards=1, lane_shards=1, sources=("p",), model=model)

    stage = ModelStage(0, cfg_of("numba"))
    _drive(stage.models, 6)
    blob = st.snapshot_bytes(stage)
    _, _, entries = st.unpack(blob)
    doc = st.unpack(entries["m:recoverability"])
    assert doc["layout"] == dense.LAYOUT_VERSION and len(doc["state"]) == 6 * 2 * 5 * 8  # 5 inputs
    assert b"river.linear_model" not in doc["evaluation"]  # metrics only, no River model
    for engine in ("python", "numba"):
        cfg = cfg_of(engine)
        restored = st.load_bytes(ModelStage(0, cfg), blob, cfg).stage
        assert _params(restored.models) == _params(stage.models)
        assert _drive(restored.models, 7, 100) == _drive(_copy(stage), 7, 100)


def _copy(stage):
    cfg = stage.cfg
    return st.load_bytes(type(stage)(0, cfg), st.snapshot_bytes(stage), cfg).stage.models


SCENARIOS = [  # every simulator scenario (the test below checks the list is complete)
    ("steady-state", 1500, 1, ()),
    ("thin-lane-incident", 1500, 2, ()),
    ("launch-week-backlog", 1500, 4, ("realistic-text",)),
    ("silent-carrier-incident", 3000, 3, ()),  # promotes only after ~2 months of labels
]


def test_the_engine_comparison_covers_every_simulator_scenario() -> None:
    from salvage.connectors.simulator import SCENARIOS as ALL

    assert {s[0] for s in SCENARIOS} == set(ALL)


@pytest.mark.parametrize(("scenario", "orders", "seed", "variants"), SCENARIOS)
def test_salvage_run_outputs_are_byte_identical_on_both_engines(
    tmp_path, salvage_cli, scenario, orders, seed, variants
):
    """File mode, the models promoted early (so they drive decisions; 40 orders a day, so labels
    of both classes arrive within the log): every output file equal. The metrics file's samples
    are compared sorted (series appear in first-use order), without the process' own series and
    the wall-clock ones (creation times, watermark lag)."""
    from salvage.connectors.simulator import write_log

    log = tmp_path / "events.jsonl"
    write_log(scenario, orders, seed, log, orders_per_day=40.0, variants=variants)
    outs = {}
    for engine in ("python", "numba"):
        out = tmp_path / engine
        env = {
            "SALVAGE_REDIS_URL": "",
            "SALVAGE_MODEL_ENGINE": engine,
            "SALVAGE_MODEL_MIN_LABELS": "30",
            "SALVAGE_MODEL_PROMOTE_MARGIN": "0",
        }
        run = salvage_cli(
            "run", "--input", str(log), "--out-dir", str(out), "--no-summary", env=env
        )  # fmt: skip
        assert run.wait(timeout=300) == 0, run.err_path.read_text()
        outs[engine] = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}
        outs[engine]["metrics.prom"] = _samples(outs[engine]["metrics.prom"])
    assert outs["python"].keys() == outs["numba"].keys()
    assert "interventions.jsonl" in outs["numba"]
    for name in outs["python"]:
        assert outs["python"][name] == outs["numba"][name], name
    events = outs["numba"].get("model_events.jsonl", b"")
    assert b'"promoted"' in events  # the models drove decisions in this run


_WALL_CLOCK = (b"#", b"python_", b"process_", b"salvage_watermark_lag_seconds")


def _samples(prom: bytes) -> bytes:
    lines = prom.splitlines()
    keep = [x for x in lines if not x.startswith(_WALL_CLOCK) and b"_created" not in x]
    return b"\n".join(sorted(keep))
