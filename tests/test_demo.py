"""The demo's stage machinery: finished stages are reused, changed settings rerun them."""

from lhotse import CutSet

from s3kit.config import ConfigError, apply_overrides
from s3kit.data.manifest import load_cuts, save_cuts
from s3kit.demo import DemoConfig, _run_stage, _sid_splits
from s3kit.testing import tone_cuts

import pytest


def test_finished_stage_is_reused_and_rerun_on_new_settings(tmp_path):
    calls = []

    def work():
        calls.append(1)
        return {"value": len(calls)}

    log = []
    assert _run_stage(tmp_path, "s", {"a": 1}, work, log.append) == {"value": 1}
    assert _run_stage(tmp_path, "s", {"a": 1}, work, log.append) == {"value": 1}
    assert len(calls) == 1 and "reusing" in log[-1]
    assert _run_stage(tmp_path, "s", {"a": 2}, work, log.append) == {"value": 2}
    assert len(calls) == 2


def test_interrupted_stage_leaves_nothing_marked_done(tmp_path):
    def boom():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run_stage(tmp_path, "s", {}, boom, lambda _: None)
    assert not (tmp_path / "stages" / "s.json").exists()


def test_sid_splits_hold_the_same_speakers_and_skip_unlabelled_clips(tmp_path):
    cuts = list(tone_cuts(tmp_path / "wav", n=12, seconds=(0.4, 0.5)))  # speakers spk0..spk2, 4 clips each
    silence = cuts[0].with_id("sil0")
    silence.supervisions = [s.with_offset(0) for s in silence.supervisions]
    silence.supervisions[0].speaker = None
    path = save_cuts(CutSet.from_cuts(cuts + [silence]), tmp_path / "kw.jsonl.gz")
    train, dev, test = (load_cuts(p) for p in _sid_splits(tmp_path, {"keywords_train": str(path)}))
    spk = lambda cs: sorted({c.supervisions[0].speaker for c in cs})  # noqa: E731
    assert spk(train) == spk(dev) == spk(test) == ["spk0", "spk1", "spk2"]
    assert (len(train), len(dev), len(test)) == (6, 3, 3)
    assert not {c.id for c in train} & {c.id for c in test}


def test_demo_config_rejects_typos():
    with pytest.raises(ConfigError, match="did you mean 'teacher_steps'"):
        apply_overrides(DemoConfig(), ["teacher_step=10"])
    with pytest.raises(ValueError, match="'shipped' or 'train'"):
        DemoConfig(teacher="download")
    with pytest.raises(ValueError, match=r"extra_tasks: unknown \['sff'\]"):
        apply_overrides(DemoConfig(), ["extra_tasks=[qbe,sff]"])
    assert apply_overrides(DemoConfig(), ["extra_tasks=[qbe,sf]"]).extra_tasks == ["qbe", "sf"]  # SF on request


def test_stage_reruns_when_its_code_changes(tmp_path):
    """Student stages carry a hash of their function's source in their settings, so editing a
    stage (e.g. the rewiring mode) reruns it instead of reusing a result made by the old code."""
    from s3kit.demo import STUDENTS, _code_key

    keys = {_code_key(fn) for _, fn in STUDENTS}
    assert len(keys) == len(STUDENTS)  # every student stage has its own key
    key = _code_key(STUDENTS[0][1])
    assert key == _code_key(STUDENTS[0][1]) and len(key) == 12
    calls = []
    log = []
    for fn_key in (key, key, "other"):
        _run_stage(tmp_path, "student", {"steps": 1, "code": fn_key}, lambda: calls.append(1) or {"n": len(calls)}, log.append)
    assert len(calls) == 2  # reused once, rerun when the code key changed


def test_stage_workdir_is_kept_to_resume_and_wiped_when_settings_change(tmp_path):
    """A rerun with the same settings after an interrupt keeps the stage's checkpoints (training
    resumes); a rerun with changed settings starts from an empty directory, so the trainer cannot
    'resume' a finished run made with other settings and do nothing."""
    work = tmp_path / "student"
    seen = []

    def interrupted():
        (work / "checkpoint").write_text("half done")
        raise KeyboardInterrupt

    def finish():
        seen.append((work / "checkpoint").exists())
        (work / "checkpoint").write_text("done")
        return {"ok": True}

    with pytest.raises(KeyboardInterrupt):
        _run_stage(tmp_path, "student", {"code": "a"}, interrupted, print, workdir=work)
    _run_stage(tmp_path, "student", {"code": "a"}, finish, print, workdir=work)
    assert seen == [True]  # resumed from the interrupted run's checkpoint
    _run_stage(tmp_path, "student", {"code": "b"}, finish, print, workdir=work)
    assert seen == [True, False]  # new settings: the old checkpoint is gone
    (work / "stray").write_text("from an older s3kit without a settings marker")
    _run_stage(tmp_path, "student", {"code": "c"}, finish, print, workdir=work)
    assert not (work / "stray").exists()


def test_rewiring_stage_writes_a_report_section(tmp_path):
    """stage_rewiring on two classical upstreams over tone clips: one geometry row per model,
    one KS row per (fraction, model) with the clip count of the stratified fraction, t-SNE plots
    that exist and are referenced relative to the run, and a report that shows the section."""
    import json

    from s3kit.demo import DEMO_FRACTIONS, stage_rewiring
    from s3kit.report import build_report

    data = {}
    for split, n, seed in (("train", 40, 0), ("dev", 8, 1), ("test", 12, 2)):
        path = tmp_path / f"kw_{split}.jsonl.gz"
        save_cuts(tone_cuts(tmp_path / split, n=n, classes=2, seconds=(0.4, 0.6), seed=seed), path)
        data[f"keywords_{split}"] = str(path)
    cfg = DemoConfig(out=str(tmp_path), probe_updates=40, device="cpu")
    models = {"teacher": {"upstream": "fbank"}, "rewired": {"upstream": "mfcc"}}
    out = stage_rewiring(tmp_path, cfg, data, models)
    section = json.loads((tmp_path / "sections" / "rewiring.json").read_text())
    geometry, table, comparison = section["tables"]
    assert [r[0] for r in geometry["rows"]] == ["teacher", "rewired"]
    assert len(table["rows"]) == 2 * len(DEMO_FRACTIONS)
    assert [r[3] for r in table["rows"]][::2] == [str(round(f * 40)) for f in DEMO_FRACTIONS]
    # two tone classes 300 Hz apart: the full training set gives a probe far above chance
    full = [float(r[4].split()[0]) / 100 for r in table["rows"] if r[0] == "100%"]
    assert min(full) > 0.8, full
    assert all(f"{cfg.probe_seeds} seeds" in r[4] and "[" in r[4] for r in table["rows"])
    # rewired minus teacher at every fraction, with its paired test and Holm p
    assert [r[0] for r in comparison["rows"]] == [f"{f:.0%}" for f in DEMO_FRACTIONS]
    assert all(r[2] == "rewired − teacher" for r in comparison["rows"])
    assert out["geometry"]["teacher"]["log10_isotropy"] <= 0
    for plot in section["plots"]:
        assert not plot["file"].startswith("/") and (tmp_path / plot["file"]).exists()
    (tmp_path / "models" / "teacher").mkdir(parents=True)
    (tmp_path / "models" / "teacher" / "card.json").write_text(json.dumps({"name": "teacher"}))
    text = build_report(tmp_path).read_text()
    assert "Low-resource probes" in text and text.count("section0_tsne_") == 2


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The whole demo at the smoke preset (every stage, a few dozen clips, a handful of updates)."""
    from s3kit.demo import demo, demo_config

    out = tmp_path_factory.mktemp("smoke")
    log = []
    page = demo(demo_config("smoke", out=str(out), device="cpu"), log=log.append)
    return out, page, log


@pytest.mark.slow
def test_smoke_demo_writes_a_ledger_whose_verdicts_follow_the_rule(smoke_run):
    import json

    from s3kit.eval import findings as fd
    from s3kit.eval.stats import holm

    out, page, _ = smoke_run
    rows = json.loads((out / "report" / "findings.json").read_text())
    papers = {r["paper"] for r in rows}
    assert {"DistilHuBERT", "DVCC (on-device KWS)", "M2D-S", "Rewiring", "Social bias (SpEAT)",
            "Pretraining (MelHuBERT teacher)"} <= papers
    claims = " | ".join(r["claim"] for r in rows)
    for needle in ("random initialisation on KS", "random initialisation on PR", "keeps most", "faster on CPU",
                   "below the no-KD baseline's (clean)", "(0 dB)", "teacher-codebook", "M2D-S (Table 5 e)",
                   "raises isotropy", "low-resource KS", "full-data KS", "gender association", "pruning changes",
                   "distillation changes", "planted association", "no association"):
        assert needle in claims, needle
    for r in rows:
        assert set(fd.KEYS) <= set(r), r
        assert r["verdict"] == fd.verdict(r["ci_low"], r["ci_high"], r["p_adjusted"], r["direction"], r["null"])
        if r["effect"] is not None:
            assert r["ci_low"] <= r["ci_high"] and r["n"] > 0
    tested = [r for r in rows if r["p"] is not None]
    assert [r["p_adjusted"] for r in tested] == pytest.approx(holm([r["p"] for r in tested]))
    # the ledger is the report's first section
    md = (out / "report" / "index.md").read_text()
    assert md.index("What the papers claim and what this run shows") < md.index("Speed and size")
    assert "Findings ledger" in page.read_text()


@pytest.mark.slow
def test_smoke_demo_cards_carry_intervals_seeds_and_predictions(smoke_run):
    import json

    from s3kit.eval.probe import read_predictions

    out, _, _ = smoke_run
    card = json.loads((out / "models" / "teacher" / "card.json").read_text())
    for task in ("ks", "ic", "sid", "pr"):
        p = card["probe"][task]
        assert p["n"] > 0 and p["ci_low"] <= p["score"] <= p["ci_high"]
        assert len(p["per_seed"]) == p["seeds"] == 2
        assert p["score"] == pytest.approx(sum(s["score"] for s in p["per_seed"]) / 2)
        lines = read_predictions(out / "models" / "teacher" / "predictions" / f"{task}.jsonl.gz")
        assert sorted({x["seed"] for x in lines}) == [0, 1] and len(lines) == 2 * p["n"]
    assert {json.loads(p.read_text())["name"] for p in (out / "models").glob("*/card.json")} >= {
        "teacher", "teacher-init", "mfcc", "distilhubert", "dvcc", "pruned", "rewired", "m2ds", "m2d"}


def test_smoke_demo_probes_the_further_tasks_into_cards_and_report(smoke_run):
    """The `tasks` stage (issue 20 item 7): QbE, SD, style, ENV, MUS on every model, each card entry
    with its metric, n and an interval around the score, per-item predictions with their seed,
    and both probing tables of the report showing them with the metric's direction."""
    import json

    from s3kit.eval.probe import read_predictions

    out, _, first = smoke_run
    assert "[task-sets] running" in first and "[tasks-teacher] running" in first
    metrics = {"qbe": "mtwv", "sd": "der", "style": "accuracy", "env": "accuracy", "mus": "accuracy"}
    for name in ("teacher", "mfcc", "distilhubert"):
        card = json.loads((out / "models" / name / "card.json").read_text())
        assert {"ks", "ic", "sid", "pr"} <= set(card["probe"])  # the probe stage's entries are kept
        for task, metric in metrics.items():
            p = card["probe"][task]
            assert p["metric"] == metric and p["n"] > 0 and p["seeds"] == 1
            assert p["ci_low"] <= p["score"] <= p["ci_high"]  # may be a point at 0 / 100 % on the tiny sets
            lines = read_predictions(out / "models" / name / "predictions" / f"{task}.jsonl.gz")
            assert lines and {x["seed"] for x in lines} == {0}
    assert (out / "data" / "tasks" / "sd").is_dir()
    md = (out / "report" / "index.md").read_text()
    for task, metric in metrics.items():
        assert f"{task.upper()} {metric} [95 % CI], n" in md and f"{task.upper()}: model − " in md
    assert "Lower is better for DER" in md and "higher is better for MTWV" in md


@pytest.mark.slow
def test_smoke_demo_rerun_reuses_every_stage(smoke_run):
    from s3kit.demo import demo, demo_config

    out, _, first = smoke_run
    stages = [line.split("]")[0][1:] for line in first if line.endswith("running")]
    assert {"corpus", "probe-teacher", "task-sets", "tasks-teacher", "bias", "rewiring", "kws-dvcc",
            "findings"} <= set(stages)
    log = []
    demo(demo_config("smoke", out=str(out), device="cpu"), log=log.append)
    assert not [line for line in log if line.endswith("running")]
    assert sum("reusing" in line for line in log) == len(stages)
