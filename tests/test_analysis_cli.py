"""``olmo-sam forgetting`` end to end on a generated results file, checked against an
independent computation from the raw JSONL; plots, tables, JSON, and the error messages."""

from __future__ import annotations

import csv
import json
from collections import defaultdict

import pytest
from analysis_synth import ARMS, record, sweep, write_store
from click.testing import CliRunner

from olmo_sam.analysis.forgetting import group_curves, match_at_tau, matched_pt_view
from olmo_sam.analysis.plots import plot_frontiers, plot_matched_pt
from olmo_sam.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "results.jsonl"
    write_store(path, sweep(noise=0.02, seed=1))
    return path


def invoke(*args):
    return CliRunner().invoke(main, ["forgetting", *map(str, args)], catch_exceptions=False)


def raw(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def independent_matched(rows, dataset, bases):
    """App C.4 straight from the JSONL dicts: tau, min L_PT at L_FT <= tau, forgetting."""
    sets = defaultdict(list)
    for r in rows:
        if r["dataset"] == dataset and r["base"] in bases:
            sets[r["base"]].append(r)
    tau = max(min(r["l_ft"] for r in rs) for rs in sets.values())
    out = {}
    for base, rs in sets.items():
        l_pt = min(r["l_pt"] for r in rs if r["l_ft"] <= tau)
        out[base] = (l_pt, l_pt - rs[0]["base_l_pt"])
    return tau, out


def test_frontier_end_to_end(results, tmp_path):
    out = tmp_path / "out"
    res = invoke("frontier", results, "--out", out, "--annotate-lr")
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["frontier.csv", "frontier.json", "frontier.md", "frontier.png"]  # no temp files
    assert (out / "frontier.png").read_bytes()[:8] == PNG
    assert res.stdout == (out / "frontier.md").read_text()
    # independent brute-force frontier for every (dataset, base)
    rows = raw(results)
    expect = set()
    for r in rows:
        same = [o for o in rows if o["dataset"] == r["dataset"] and o["base"] == r["base"]]
        if not any(
            o["l_pt"] <= r["l_pt"] and o["l_ft"] <= r["l_ft"] and (o["l_pt"], o["l_ft"]) != (r["l_pt"], r["l_ft"])
            for o in same
        ):
            expect.add(r["run_id"])
    table = read_csv(out / "frontier.csv")
    assert {row["run_ids"] for row in table} == expect
    for row in table:
        assert float(row["forgetting"]) == pytest.approx(float(row["l_pt"]) - float(row["base_l_pt"]))
    payload = json.loads((out / "frontier.json").read_text())
    assert sorted(payload["datasets"]) == ["code", "math"]
    entry = payload["datasets"]["code"][0]
    assert entry["label"] == "adamw@step1000" and entry["arm"] == "adamw" and entry["n_runs"] == 11
    assert len(entry["frontier"]) + len(entry["dominated"]) == 11


def test_compare_end_to_end_matches_independent_computation(results, tmp_path):
    bases = ["/ckpts/adamw/step4000", "/ckpts/sam/step4000"]
    out = tmp_path / "cmp"
    # select by path and by label@dirname; name the reference by its label@dirname too
    res = invoke(
        "compare", results, "--base", bases[0], "--base", "sam@step4000", "--reference", "adamw@step4000", "--out", out
    )
    assert res.exit_code == 0, res.output
    assert (out / "compare.png").read_bytes()[:8] == PNG
    table = read_csv(out / "compare.csv")
    assert [(r["dataset"], r["curve"], r["reference"]) for r in table] == [
        ("code", "adamw", "yes"),
        ("code", "sam", ""),
        ("math", "adamw", "yes"),
        ("math", "sam", ""),
    ]
    rows = raw(results)
    for ds in ("code", "math"):
        tau, got = independent_matched(rows, ds, bases)
        mine = {r["curve"]: r for r in table if r["dataset"] == ds}
        for label, base in zip(("adamw", "sam"), bases):
            assert float(mine[label]["tau"]) == tau
            assert float(mine[label]["l_pt"]) == got[base][0]
            assert float(mine[label]["forgetting"]) == pytest.approx(got[base][1])
        want = 100 * (1 - got[bases[1]][1] / got[bases[0]][1])
        assert float(mine["sam"]["less_forgetting_pct"]) == pytest.approx(want)
        assert want > 50  # the synthetic SAM arm is 4.7x less sensitive
    payload = json.loads((out / "compare.json").read_text())
    assert payload["datasets"]["code"]["rule"] == "L_FT <= tau"
    assert payload["datasets"]["code"]["tau_source"] == "eq10"


def test_compare_says_single_runs_have_no_interval(results, tmp_path):
    """Every curve is one base checkpoint: "% less forgetting" compares one run with one run, and
    the terminal, compare.md, compare.csv and compare.json say it is not evidence of a difference."""
    out = tmp_path / "single"
    res = invoke("compare", results, "--dataset", "code", "--reference", "adamw@step4000", "--out", out)
    assert res.exit_code == 0, res.output
    md = (out / "compare.md").read_text()
    assert res.stdout == md
    for text in (res.stdout, md):
        assert "Single-run comparison, no interval" in text and "Each of the 6 curves is one base checkpoint" in text
        assert "not evidence of a difference" in text and "`olmo-sam study run`" in text
    table = read_csv(out / "compare.csv")
    assert [r["interval"] for r in table if r["reference"] == "yes"] == [""]
    assert {r["interval"] for r in table if r["reference"] != "yes"} == {"none: single run per side"}
    payload = json.loads((out / "compare.json").read_text())
    assert "not evidence of a difference" in payload["caveats"][0]
    assert all(c["runs_per_side"] == 1 and c["interval"] is None for c in payload["datasets"]["code"]["curves"])
    js = invoke("compare", results, "--dataset", "code", "--json")
    assert "not evidence of a difference" in json.loads(js.stdout)["caveats"][0]
    # the frontier is no comparison: no caveat there
    fr = invoke("frontier", results, "--dataset", "code")
    assert "Single-run" not in fr.stdout


def test_compare_json_stdout_and_interpolation(results):
    res = invoke(
        "compare", results, "--dataset", "code", "--base", "adamw", "--json", "--interpolate", "--tau", "code=1.3"
    )
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    d = payload["datasets"]["code"]
    assert d["tau"] == 1.3 and d["tau_source"] == "given" and d["interpolate"] is True
    assert d["reference"] == "adamw@step1000"  # default: first label
    assert "first by label" in res.stderr
    assert all(c["l_ft"] == 1.3 for c in d["curves"] if c["interpolated"])


def test_matched_pt_end_to_end(results, tmp_path):
    out = tmp_path / "mpt"
    res = invoke("matched-pt", results, "--out", out, "--format", "svg")
    assert res.exit_code == 0, res.output
    assert (out / "matched_pt.svg").read_text().lstrip().startswith("<?xml")
    table = read_csv(out / "matched_pt.csv")
    assert len(table) == 12  # 2 datasets x 2 arms x 3 checkpoints
    rows = raw(results)
    all_bases = sorted({r["base"] for r in rows})
    for ds in ("code", "math"):
        tau, got = independent_matched(rows, ds, all_bases)
        mine = [r for r in table if r["dataset"] == ds]
        assert {float(r["tau"]) for r in mine} == {tau}
        assert sorted(float(r["l_pt"]) for r in mine) == sorted(v[0] for v in got.values())
        # per arm, base PT loss descending
        for arm in ("adamw", "sam"):
            xs = [float(r["base_l_pt"]) for r in mine if r["arm"] == arm]
            assert xs == sorted(xs, reverse=True) and len(xs) == 3


def test_plots_directly(tmp_path):
    curves = group_curves(sweep())
    matched = {ds: match_at_tau(cs) for ds, cs in curves.items()}
    p = plot_frontiers(curves, tmp_path / "f.pdf", matched=matched, annotate_lr=True)
    assert p.read_bytes()[:5] == b"%PDF-"
    views = {ds: matched_pt_view(cs) for ds, cs in curves.items()}
    p = plot_matched_pt(views, tmp_path / "m.png")
    assert p.read_bytes()[:8] == PNG
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.pdf", "m.png"]


# ---- errors --------------------------------------------------------------------------------


def test_empty_store(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    res = invoke("frontier", path)
    assert res.exit_code == 1 and "holds no finished fine-tuning runs" in res.output


def test_not_a_record(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"run_id": "x", "colour": "blue"}\n')
    res = invoke("frontier", path)
    assert res.exit_code == 1 and "not a fine-tuning result record" in res.output
    assert "colour" in res.output


def test_unknown_dataset(results):
    res = invoke("frontier", results, "--dataset", "starcoder")
    assert res.exit_code == 1
    assert "['starcoder'] not in the results; available: code, math" in res.output


def test_single_checkpoint_cannot_be_compared(results):
    res = invoke("compare", results, "--base", "/ckpts/sam/step4000", "--dataset", "code")
    assert res.exit_code == 1
    assert "needs at least two checkpoints on dataset 'code'; found only 'sam'" in res.output
    # the Fig 5 view of one checkpoint is fine
    assert invoke("matched-pt", results, "--base", "/ckpts/sam/step4000").exit_code == 0


def test_tau_never_reached_names_the_checkpoints(results):
    res = invoke("compare", results, "--dataset", "code", "--tau", "1.22")
    assert res.exit_code == 1
    assert "never reach L_FT <= tau = 1.22" in res.output
    assert "'adamw@step1000' (best L_FT" in res.output and "'sam@step4000' (best L_FT" in res.output


def test_bad_tau_values(results):
    res = invoke("compare", results, "--tau", "low")
    assert res.exit_code == 2 and "'low' is not LOSS or DATASET=LOSS" in res.output
    res = invoke("compare", results, "--tau", "starcoder=1.3")
    assert res.exit_code == 2 and "dataset 'starcoder' is not among the analysed datasets" in res.output
    res = invoke("matched-pt", results, "--strict")
    assert res.exit_code == 1 and "needs an explicit tau" in res.output
    res = invoke("compare", results, "--tau", "1.5", "--tau", "1.6")
    assert res.exit_code == 2 and "one bare LOSS at most" in res.output


def test_diverged_runs_are_reported(tmp_path):
    """A diverged run (NaN losses) is named on the terminal and in the written table and JSON (it
    used to be said on the terminal only); a run diverged to a finite but huge loss is off the
    plot's axes, which frame the frontier (it used to squeeze every point into one dot)."""
    path = tmp_path / "r.jsonl"
    recs = [record("ok", 3.2, 1.0, dataset="code"), record("ok2", 3.1, 1.4, dataset="code")]
    recs += [record("boom", float("nan"), float("nan"), dataset="code"), record("huge", 9e7, 7.5e7, dataset="code")]
    write_store(path, recs)
    res = invoke("frontier", path, "--out", tmp_path / "fr")
    assert res.exit_code == 0
    note = "1 run(s) with non-finite loss left out (diverged): boom"
    assert note in res.stderr and note in (tmp_path / "fr" / "frontier.md").read_text()
    assert json.loads((tmp_path / "fr" / "frontier.json").read_text())["notes"] == [
        f"code/{recs[0].base_label}: {note}"
    ]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from olmo_sam.analysis.forgetting import group_curves
    from olmo_sam.analysis.plots import _clip_to_frontiers

    (curve,) = group_curves(recs)["code"]
    _, ax = plt.subplots()
    ax.scatter([r.l_pt for r in recs[:2] + recs[3:]], [r.l_ft for r in recs[:2] + recs[3:]])
    _clip_to_frontiers(ax, [curve])
    assert ax.get_xlim()[1] < 4 and ax.get_ylim()[1] < 2  # framed on the frontier, not on 9e7
    assert "1 dominated run(s) off the axes (loss up to 9e+07)" in [t.get_text() for t in ax.texts]
    plt.close("all")


def test_several_stores_are_merged(tmp_path):
    recs = sweep(arms={k: v[-1:] for k, v in ARMS.items()}, datasets={"code": 1.2})
    a, b = tmp_path / "adamw.jsonl", tmp_path / "sam.jsonl"
    write_store(a, [r for r in recs if r.base_label == "adamw"])
    write_store(b, [r for r in recs if r.base_label == "sam"] + recs[:1])  # one identical repeat
    res = invoke("compare", a, b, "--reference", "adamw", "--json")
    assert res.exit_code == 0, res.output
    curves = json.loads(res.stdout)["datasets"]["code"]["curves"]
    assert [c["label"] for c in curves] == ["adamw", "sam"]
    clash = tmp_path / "clash.jsonl"
    write_store(clash, [record(recs[0].run_id, 9.0, 9.0, dataset="code")])
    res = invoke("frontier", a, clash)
    assert res.exit_code == 1 and f"run '{recs[0].run_id}' is recorded differently" in res.output


def test_a_finetune_run_records_json_and_directories_are_read(results, tmp_path):
    """``finetune run --out D`` writes D/records.json (a JSON list); it was read line by line as
    JSONL ('not a fine-tuning result record ('float' object is not iterable)'), and a sweep's --out
    directory was refused by click."""
    run_dir = tmp_path / "ft1"
    run_dir.mkdir()
    (run_dir / "records.json").write_text(json.dumps(raw(results), indent=2))
    want = invoke("frontier", results, "--json").output
    for arg in (run_dir / "records.json", run_dir, results.parent):
        res = invoke("frontier", arg, "--json")
        assert res.exit_code == 0 and res.output == want, (arg, res.output)
    (tmp_path / "empty").mkdir()
    res = invoke("frontier", tmp_path / "empty")
    assert res.exit_code == 1 and "holds neither results.jsonl" in res.output, res.output
    (run_dir / "records.json").write_text('{"run_id": "x"}')
    res = invoke("frontier", run_dir)
    assert res.exit_code == 1 and "expected a JSON list of records" in res.output, res.output
    (tmp_path / "list.jsonl").write_text("[1, 2]\n")
    res = invoke("frontier", tmp_path / "list.jsonl")
    assert res.exit_code == 1 and "expected a record (a JSON object), got list" in res.output, res.output
