"""The benchmark report: aggregation over seeds, plots, paper comparison, Markdown and HTML."""

from __future__ import annotations

import json
import math
import re

import pytest
from PIL import Image

from prunekit.bench import paper, plots
from prunekit.bench.report import aggregate, report_from_stores, write_report
from prunekit.bench.store import RunRecord
from prunekit.errors import ConfigError

SCRIPT = "<script>alert(1)</script>"

# top-1 after fine-tuning per (target, seed), worked out by hand below
HRANK_ACC = {(0.3, 0): 93.0, (0.3, 1): 92.0, (0.3, 2): 94.0}
HRANK_ACC |= {(0.5, 0): 90.0, (0.5, 1): 91.0, (0.5, 2): 95.0}
DNS_ACC = {(0.5, 0): 94.0, (0.5, 1): 96.0, (0.8, 0): 90.0, (0.8, 1): 89.0}
DNS_SPARSITY = {(0.5, 0): 0.50, (0.5, 1): 0.52, (0.8, 0): 0.80, (0.8, 1): 0.80}
ENV = {"torch": "2.13.0", "threads": 1, "workers": 0, "device": "cpu", "python": "3.11"}


def config(method, kind, target, seed, options=None):
    return {
        "model": "resnet20",
        "data": "digits",
        "image_size": 32,
        "root": None,
        "seed": seed,
        "method": method,
        "target_kind": kind,
        "target": target,
        "epochs": 10,
        "batch_size": 64,
        "lr": 0.1,
        "finetune_epochs": 3,
        "finetune_lr": 0.01,
        "calib_batches": 4,
        "options": options or {},
    }


def structured(target, seed):
    acc = HRANK_ACC[(target, seed)]
    before = 95.0 + 0.5 * seed
    return {
        "acc_before": before,
        "acc_pruned": acc - 20.0,
        "acc_finetuned": acc,
        "acc_drop": before - acc,
        "params_before": 10000,
        "params_after": round(10000 * (1 - 0.8 * target)),  # 0.3: 7600, 0.5: 6000
        "flops_before": 1_000_000,
        "flops_after": round(1_000_000 * (1 - target)),
        "latency_before_ms": 2.0,
        "latency_after_ms": 1.0,
        "latency_b32_before_ms": 20.0,
        "latency_b32_after_ms": 10.0,
        "speedup": 1.2 + 0.1 * seed + (0.4 if target == 0.5 else 0.0),
        "speedup_b32": 2.0,
        "bytes_dense": 40_000,
        "bytes_sparse": 30_000,
        "prune_time_s": 0.5,
        "finetune_time_s": 3.0,
    }


def unstructured(target, seed):
    acc = DNS_ACC[(target, seed)]
    before = 95.0 + 0.5 * seed
    sparsity = DNS_SPARSITY[(target, seed)]
    return {
        "acc_before": before,
        "acc_pruned": acc - 5.0,
        "acc_finetuned": acc,
        "acc_drop": before - acc,
        "params_before": 10000,
        "params_after": 10000,
        "nonzero_params_after": round(10000 * (1 - sparsity)),
        "sparsity": sparsity,
        "flops_before": 1_000_000,
        "flops_after": 1_000_000,
        "latency_before_ms": 2.0,
        "latency_after_ms": 2.0,
        "speedup": 1.0,
        "bytes_dense": 40_000,
        "bytes_sparse": 20_000,
        "bytes_deep_compression": 4_000,
        "prune_time_s": 0.2,
        "finetune_time_s": 2.0,
    }


def record(i, cfg, status="done", metrics=None, error=None):
    return RunRecord(
        id=f"run{i:02d}",
        config=cfg,
        status=status,
        metrics=metrics or {},
        timings={"prune_s": 1.0, "finetune_s": 2.0},
        env=dict(ENV),
        error=error,
        attempts=1,
        started=1000.0 + i,
        finished=None if status == "running" else 2000.0 + i,
        shard="a.sqlite",
    )


@pytest.fixture
def records():
    out = []
    for target in (0.3, 0.5):
        for seed in (0, 1, 2):
            out.append(
                record(
                    len(out),
                    config("hrank", "flops", target, seed),
                    metrics=structured(target, seed),
                )
            )
    for target in (0.5, 0.8):
        for seed in (0, 1):
            cfg = config("budgeted", "sparsity", target, seed, options={"note": SCRIPT})
            out.append(record(len(out), cfg, metrics=unstructured(target, seed)))
    error = f"Traceback (most recent call last):\n  File x\nConfigError: bad target {SCRIPT}"
    out.append(record(90, config("hrank", "flops", 0.7, 0), status="failed", error=error))
    out.append(record(91, config("hrank", "flops", 0.9, 0), status="running"))
    return out


def markdown_rows(text):
    """Every pipe-table row of ``text`` as a dict keyed by its table's headers."""
    rows, headers = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            headers = None
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if headers is None:
            headers = cells
        elif not set(line) <= set("|- "):
            rows.append(dict(zip(headers, cells, strict=True)))
    return rows


def section(text, title):
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def test_markdown_table_has_mean_and_sd_over_seeds(records, tmp_path):
    files = write_report(records, tmp_path)
    text = files.markdown.read_text()
    rows = {(r["method"], r["target"]): r for r in markdown_rows(section(text, "resnet20"))}
    row = rows[("hrank", "flops 0.5")]
    # seeds 90, 91, 95: mean 92, sample sd sqrt((4 + 1 + 9) / 2) = sqrt(7) = 2.6458
    assert row["top-1 fine-tuned"] == "92.00 ± 2.65"
    assert row["seeds"] == "3"
    # drop per seed: 5, 4.5, 1 -> mean 3.5, sd sqrt((2.25 + 1 + 6.25) / 2) = 2.1794
    assert row["drop"] == "3.50 ± 2.18"
    assert row["FLOPs -%"] == "50.0 ± 0.0"
    assert row["params after"] == "6,000 ± 0"
    assert row["b32 speedup"] == "2.00 ± 0.00"
    # unstructured rows carry sparsity, non-zero params and Deep Compression bytes
    dns = next(r for (m, t), r in rows.items() if m.startswith("budgeted") and t == "sparsity 0.5")
    assert dns["sparsity %"] == "51.0 ± 1.4"  # 50 and 52
    assert dns["non-zero params"] == "4,900 ± 141"  # 5000 and 4800
    # (a store written before every quantising method had its file names it bytes_deep_compression)
    assert dns["bytes of its quantised file"] == "4,000 ± 0"
    assert rows[("hrank", "flops 0.5")]["non-zero params"] == "-"
    # the environment is stated once per table, the plots referenced by relative path
    assert "torch 2.13.0, 1 torch thread(s) per run, 0 run(s) at a time" in text
    for p in files.plots:
        assert f"]({p.relative_to(tmp_path).as_posix()})" in text
    # the failed and the running run are not in the tables
    assert {r["target"] for r in rows.values()} == {
        "flops 0.3",
        "flops 0.5",
        "sparsity 0.5",
        "sparsity 0.8",
    }


def test_not_finished_lists_failed_and_running_runs(records, tmp_path):
    text = write_report(records, tmp_path).markdown.read_text()
    pending = markdown_rows(section(text, "Not finished"))
    assert {r["id"]: r["status"] for r in pending} == {"run90": "failed", "run91": "running"}
    failed = next(r for r in pending if r["id"] == "run90")
    # a traceback's last line, with the tag escaped for Markdown renderers
    assert failed["error"] == r"ConfigError: bad target \<script>alert(1)\</script>"
    assert "run00" not in section(text, "Not finished")


def test_html_is_self_contained_and_escaped(records, tmp_path):
    files = write_report(records, tmp_path)
    page = files.html.read_text()
    assert page.count('src="data:image/png;base64,') == len(files.plots) == 4
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "92.00 ± 2.65" in page


def test_plots_draw_one_curve_per_method_with_seed_error_bars(records, tmp_path):
    files = write_report(records, tmp_path)
    data = json.loads(files.data.read_text())
    described = {p["name"]: p for p in data["plots"]}
    assert set(described) == {
        "accuracy_vs_reduction",
        "accuracy_vs_speedup",
        "accuracy_vs_params",
        "accuracy_vs_latency",
    }
    dns = "budgeted (note=" + SCRIPT + ")"
    hrank_y, hrank_err = [93.0, 92.0], [1.0, math.sqrt(7)]
    dns_y, dns_err = [95.0, 89.5], [math.sqrt(2), math.sqrt(0.5)]
    expected_x = {
        "accuracy_vs_reduction": ([30.0, 50.0], [51.0, 80.0]),  # FLOPs removed / sparsity %
        "accuracy_vs_speedup": ([1.3, 1.7], [1.0, 1.0]),
        "accuracy_vs_params": ([7600.0, 6000.0], [4900.0, 2000.0]),  # non-zero for dns
    }
    for name, (hrank_x, dns_x) in expected_x.items():
        plot = described[name]
        assert plot["baseline"] == pytest.approx(95.5)  # seeds 0, 1, 2: 95, 95.5, 96
        assert [p["name"] for p in plot["panels"]] == ["flops", "sparsity"]
        series = {(s["panel"], s["label"]): s for s in plot["series"]}
        assert set(series) == {("flops", "hrank"), ("sparsity", dns)}
        for key, x, y, err in [
            (("flops", "hrank"), hrank_x, hrank_y, hrank_err),
            (("sparsity", dns), dns_x, dns_y, dns_err),
        ]:
            assert series[key]["x"] == pytest.approx(x)
            assert series[key]["y"] == pytest.approx(y)
            assert series[key]["yerr"] == pytest.approx(err)
        path = tmp_path / plot["file"]
        assert path in files.plots and path.stat().st_size > 0
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 0 and im.size[1] > 0
            im.load()  # decodes the whole image


def test_rendered_axes_carry_the_described_series(records):
    (table,) = aggregate(records)
    for plot in plots.describe(table):
        if plot.name not in plots.PLOTS:  # the Pareto plot: its own test
            continue
        fig = plots.render(plot)
        axes = fig.get_axes()
        assert len(axes) == len(plot.panels) == 2
        for ax, panel in zip(axes, plot.panels, strict=True):
            mine = [s for s in plot.series if s["panel"] == panel["name"]]
            _, labels = ax.get_legend_handles_labels()
            assert sorted(labels) == sorted([s["label"] for s in mine] + ["dense baseline (95.50)"])
            assert len(ax.containers) == len(mine)
            for container, s in zip(ax.containers, mine, strict=True):
                line, _, (bars,) = container.lines
                assert list(line.get_xdata()) == pytest.approx(s["x"])
                assert list(line.get_ydata()) == pytest.approx(s["y"])
                heights = [abs(seg[1][1] - seg[0][1]) / 2 for seg in bars.get_segments()]
                assert heights == pytest.approx(s["yerr"])
            (baseline,) = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
            assert list(baseline.get_ydata()) == pytest.approx([95.5, 95.5])
        fig.clear()


def test_paper_table_pairs_methods_with_published_figures(records, tmp_path):
    files = write_report(records, tmp_path)
    data = json.loads(files.data.read_text())
    assert [p["method"] for p in data["paper"]] == ["hrank"]  # budgeted has no paper entry
    (row,) = data["paper"]
    assert row["paper_before"] == 93.26 and row["paper_after"] == 93.17
    assert row["ours_target"] == "flops 0.5"  # measured -50%, nearest the paper's -50.0%
    assert row["ours_after"] == pytest.approx(92.0)
    assert row["ours_drop"] == pytest.approx(3.5)
    assert row["differs"].startswith("paper: ResNet-56 on CIFAR-10, FLOPs -50.0%")
    assert "ours: resnet20 on digits at 32x32, FLOPs -50.0%" in row["differs"]
    assert "baseline 10 epochs + 3 fine-tuning epochs, 3 seeds" in row["differs"]
    text = files.markdown.read_text()
    (md_row,) = markdown_rows(section(text, "Paper vs ours"))
    assert (
        md_row["method"] == "hrank"
        and md_row["source"] == "Lin et al., CVPR 2020, official repository"
    )


def test_paper_error_rates_compare_against_our_error(records):
    recs = []
    for target, acc in ((0.9, 98.0), (0.95, 97.5)):
        cfg = config("snip", "sparsity", target, 0) | {"model": "lenet_300_100", "data": "mnist"}
        m = unstructured(0.8, 0) | {"sparsity": target, "acc_before": 98.5, "acc_finetuned": acc}
        m["acc_drop"] = 98.5 - acc
        recs.append(record(len(recs), cfg, metrics=m))
    (row,) = paper.paper_table(aggregate(recs))
    assert row.metric == "error" and row.paper_model == "LeNet-300-100"
    assert row.ours_target == "sparsity 0.95"
    assert row.ours_before == pytest.approx(1.5) and row.ours_after == pytest.approx(2.5)
    assert row.paper_drop == pytest.approx(-0.1)  # error 1.7 -> 1.6: accuracy gained
    assert "100 - top-1" in row.differs


def test_paper_entries_are_well_formed_and_bad_files_refused(tmp_path):
    entries = paper.load_entries()
    assert len(entries) == 28
    by_method = {(e.method, e.model): e for e in entries}
    assert by_method[("slimming", "VGG-19")].also[0] == paper.Reduction("params", 88.5)
    assert by_method[("deep_compression", "LeNet-5")].reduction == paper.Reduction(
        "bytes_ratio", 39.0
    )
    assert all(e.metric in ("top1", "error") for e in entries)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"method": "x", "model": "m", "data": "d", "metric": "top5"}]))
    with pytest.raises(ConfigError, match="paper result 0"):
        paper.load_entries(bad)


def test_report_from_stores_reads_records_through_the_store(records, tmp_path, monkeypatch):
    from prunekit.bench import store

    seen = []

    def fake_load(paths):
        seen.append(list(paths))
        return records

    monkeypatch.setattr(store, "load_records", fake_load, raising=False)
    files = report_from_stores([tmp_path / "a.sqlite"], tmp_path / "out", title="t <b>")
    assert seen == [[tmp_path / "a.sqlite"]]
    assert "<h1>t &lt;b&gt;</h1>" in files.html.read_text()
    monkeypatch.setattr(store, "load_records", lambda paths: [], raising=False)
    with pytest.raises(ConfigError, match="no run records"):
        report_from_stores([tmp_path / "b.sqlite"], tmp_path / "out2")


# ---------------------------------------------------------------------------------- decisions

# top-1 after fine-tuning by (method, target) over seeds 0 and 1, worked out by hand:
#   flops 0.5: sfp 91 ± 1.41, peer 92 ± 1.41, ref 80.5
#   flops 0.7: sfp 85.1 ± 0.14 (best; the peer 5.00 behind, beyond the spread), peer 80.1
#   sfp distilled at 0.5: 93 ± 0 (+2.00 over plain, beyond the spread 1.41)
DECIDE = {
    ("sfp", 0.5, False): (90.0, 92.0),
    ("peer:tp_l2", 0.5, False): (91.0, 93.0),
    ("ref:width_scaled", 0.5, False): (80.0, 81.0),
    ("sfp", 0.7, False): (85.0, 85.2),
    ("peer:tp_l2", 0.7, False): (80.0, 80.2),
    ("sfp", 0.5, True): (93.0, 93.0),
}


@pytest.fixture
def decided():
    out = []
    for (method, target, distill), accs in DECIDE.items():
        for seed, acc in enumerate(accs):
            cfg = config(method, "flops", target, seed)
            if distill:
                cfg |= {"distill": True, "distill_temperature": 4.0, "distill_alpha": 0.9}
            metrics = structured(0.5, seed) | {
                "acc_finetuned": acc,
                "acc_drop": 95.0 + 0.5 * seed - acc,
                "latency_after_ms": {0.5: 1.0, 0.7: 0.6}[target] + (0.3 if "ref" in method else 0),
                "onnx_latency_before_ms": 1.5,
                "onnx_latency_after_ms": 0.7 * target,
            }
            out.append(record(len(out), cfg, metrics=metrics))
    return out


def test_matrix_marks_the_best_and_results_inside_the_spread(decided, tmp_path):
    text = write_report(decided, tmp_path).markdown.read_text()
    assert text.index("## Decision matrix") < text.index("## resnet20 on digits")
    top = section(text, "Decision matrix")
    rows = markdown_rows(top.split("prunekit's best against")[0])
    labels = [r["method"] for r in rows]
    assert labels == [
        "*prunekit methods*",
        "sfp",
        "sfp (distilled T=4 alpha=0.9)",
        "*peers: other libraries' criteria (not prunekit)*",
        "peer:tp_l2",
        "*references (not prunekit)*",
        "ref:width_scaled",
    ]
    by = {r["method"]: r for r in rows}
    # the distilled sfp is best at 50%; the peer is 1.00 behind, inside its sd 1.41; plain sfp
    # is 2.00 behind, beyond it
    assert by["peer:tp_l2"]["flops -50%"] == "92.00 ± 1.41 (drop 3.25) ≈"
    assert by["sfp"]["flops -50%"] == "91.00 ± 1.41 (drop 4.25)"
    assert by["sfp (distilled T=4 alpha=0.9)"]["flops -50%"] == "**93.00 ± 0.00 (drop 2.25)**"
    assert by["ref:width_scaled"]["flops -50%"] == "80.50 ± 0.71 (drop 14.75)"
    assert by["sfp"]["flops -70%"] == "**85.10 ± 0.14 (drop 10.15)**"
    assert by["peer:tp_l2"]["flops -70%"] == "80.10 ± 0.14 (drop 15.15)"  # 5.00 behind
    assert by["ref:width_scaled"]["flops -70%"] == "-"


def test_matrices_read_back_from_report_json_give_the_same_verdicts(decided, tmp_path):
    """benchmarks/standings.py compares committed reports through their report.json."""
    from prunekit.bench.report import matrix, matrix_from_json, versus, versus_cells

    files = write_report(decided, tmp_path)
    data = json.loads(files.data.read_text())
    (table,) = aggregate(decided)
    (stored,) = data["matrices"]
    again = matrix_from_json(stored)
    original = matrix(table)
    assert again.rows == original.rows and again.columns == original.columns
    assert versus_cells(versus(again)) == versus_cells(versus(original))
    with pytest.raises(ConfigError, match="not a report matrix"):
        matrix_from_json({"title": "t", "columns": [{"kind": "flops"}], "rows": []})


def test_standings_script_tables_every_report_it_is_given(decided, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    files = write_report(decided, tmp_path / "my-report")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "standings.py"
    out = tmp_path / "standings.md"
    subprocess.run([sys.executable, str(script), str(files.data), "--out", str(out)], check=True)
    rows = markdown_rows(out.read_text().split("\n\n", 2)[2])
    assert [(r["report"], r["target"], r["prunekit's best"], r["verdict"]) for r in rows] == [
        (
            "my-report",
            "flops -50%",
            "sfp (distilled T=4 alpha=0.9)",
            "level: +1.00 is inside the spread 1.41",
        ),
        ("my-report", "flops -70%", "sfp", "ahead by 5.00, beyond the spread 0.14"),
    ]
    (tmp_path / "bad.json").write_text("{not json")
    bad = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "bad.json"), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "bad.json: not a readable bench report.json" in bad.stderr


def test_a_single_seed_verdict_does_not_claim_a_spread(decided):
    from prunekit.bench.report import matrix, versus

    one_seed = [r for r in decided if r.config["seed"] == 0]
    (table,) = aggregate(one_seed)
    verdicts = [v.verdict() for v in versus(matrix(table))]
    # seed 0: sfp distilled 93 against the peer's 91 at 50%; sfp 85 against 80 at 70%
    assert verdicts == [
        "ahead by 2.00 (one seed: no spread)",
        "ahead by 5.00 (one seed: no spread)",
    ]


def test_prunekit_against_peer_and_distillation_tables(decided, tmp_path):
    files = write_report(decided, tmp_path)
    top = section(files.markdown.read_text(), "Decision matrix")
    versus = markdown_rows(
        top.split("prunekit's best against the peers' best:")[1].split("Distilled")[0]
    )
    assert [(v["target"], v["prunekit's best"], v["peer's best"]) for v in versus] == [
        ("flops -50%", "sfp (distilled T=4 alpha=0.9)", "peer:tp_l2"),
        ("flops -70%", "sfp", "peer:tp_l2"),
    ]
    assert versus[0]["verdict"] == "level: +1.00 is inside the spread 1.41"
    assert versus[1]["verdict"] == "ahead by 5.00, beyond the spread 0.14"
    assert versus[0]["width-scaled reference"] == "80.50 ± 0.71 (drop 14.75)"
    (pair,) = markdown_rows(top.split("Distilled against plain fine-tuning:")[1])
    assert pair == {
        "method": "sfp",
        "target": "flops 0.5",
        "plain fine-tuning": "91.00 ± 1.41 (drop 4.25)",
        "distilled": "93.00 ± 0.00 (drop 2.25)",
        "distilled - plain": "+2.00",
    }
    data = json.loads(files.data.read_text())
    (m,) = data["matrices"]
    cells = {r["label"]: r["cells"] for r in m["rows"]}
    assert [c["best"] for c in cells["sfp"]] == [False, True]
    assert [c["level"] for c in cells["peer:tp_l2"]] == [True, False]
    page = files.html.read_text()
    assert "<strong>85.10 ± 0.14 (drop 10.15)</strong>" in page
    assert 'class="sep"' in page


def test_every_method_against_random_channels(decided, tmp_path):
    """By hand, seeds 0 and 1: random_channel 90.00 ± 1.41 at 50%, 80.20 ± 0.28 at 70%; hrank
    89.00 ± 1.41 and 79.20 ± 0.28. sfp is +1.00 (inside 1.41) then +4.90 (beyond 0.28); hrank
    -1.00 inside, then -1.00 beyond: ahead at no target. Peer rows are not compared."""
    extra = {
        ("random_channel", 0.5): (89.0, 91.0),
        ("random_channel", 0.7): (80.0, 80.4),
        ("hrank", 0.5): (88.0, 90.0),
        ("hrank", 0.7): (79.0, 79.4),
    }
    records = list(decided)
    for (method, target), accs in extra.items():
        for seed, acc in enumerate(accs):
            metrics = structured(0.5, seed) | {"acc_finetuned": acc, "acc_drop": 95.0 - acc}
            records.append(
                record(len(records), config(method, "flops", target, seed), metrics=metrics)
            )
    files = write_report(records, tmp_path)
    top = section(files.markdown.read_text(), "Decision matrix")
    part = top.split("Against random channels:")[1]
    rows = {r["method"]: r for r in markdown_rows(part.split("Not ahead")[0])}
    assert set(rows) == {"hrank", "sfp", "sfp (distilled T=4 alpha=0.9)"}
    assert (rows["sfp"]["flops -50%"], rows["sfp"]["flops -70%"]) == ("+1.00 ≈", "+4.90")
    assert (rows["hrank"]["flops -50%"], rows["hrank"]["flops -70%"]) == ("-1.00 ≈", "-1.00")
    assert rows["sfp (distilled T=4 alpha=0.9)"]["flops -70%"] == "-"
    assert "Not ahead of random channels beyond the spread at any target: hrank." in part
    (m,) = json.loads(files.data.read_text())["matrices"]
    assert m["against_random"]["not_ahead"] == ["hrank"]
    assert "Against random channels" in files.html.read_text()
    # no random-channel row: no section
    assert (
        "Against random channels" not in write_report(decided, tmp_path / "b").markdown.read_text()
    )


def test_pareto_front_by_hand():
    points = [(1.0, 90.0), (2.0, 95.0), (1.5, 89.0), (3.0, 94.0), (0.5, 80.0), (1.0, 85.0)]
    assert plots.pareto_front(points) == [(0.5, 80.0), (1.0, 90.0), (2.0, 95.0)]


def test_pareto_plot_of_measured_latency(decided, tmp_path):
    files = write_report(decided, tmp_path)
    data = json.loads(files.data.read_text())
    (plot,) = [p for p in data["plots"] if p["name"] == "accuracy_vs_latency"]
    assert [p["name"] for p in plot["panels"]] == ["torch", "onnxruntime"]
    torch_series = {s["label"]: s for s in plot["series"] if s["panel"] == "torch"}
    assert torch_series["sfp"]["x"] == pytest.approx([1.0, 0.6])
    assert torch_series["ref:width_scaled"]["x"] == pytest.approx([1.3])
    assert torch_series["dense baseline"]["x"] == pytest.approx([2.0])
    # fastest first: sfp at 70% (0.6 ms, 85.1), then the distilled sfp at 50% (1.0 ms, 93.0);
    # the dense model (2.0 ms, 95.25) is slower but more accurate still
    front = torch_series["Pareto front"]
    assert list(zip(front["x"], front["y"], strict=True)) == pytest.approx(
        [(0.6, 85.1), (1.0, 93.0), (2.0, 95.25)]
    )
    onnx = {s["label"]: s for s in plot["series"] if s["panel"] == "onnxruntime"}
    assert onnx["dense baseline"]["x"] == pytest.approx([1.5])
    with Image.open(tmp_path / plot["file"]) as im:
        assert im.format == "PNG"


def test_rows_trained_from_initialisation_are_named_with_their_epochs(records, tmp_path):
    out = list(records)
    for method, extra in (("snip", {"scratch_epochs": 10}), ("sfw", {"from_init_epochs": 10})):
        for seed in (0, 1):
            metrics = {**unstructured(0.5, seed), "at_initialisation": True, **extra}
            out.append(record(len(out), config(method, "sparsity", 0.5, seed), metrics=metrics))
    text = write_report(out, tmp_path / "r").markdown.read_text()
    matrix_part = section(text, "Decision matrix")
    assert (
        "From the architecture's initialisation: snip pruned at initialisation, then trained 10 "
        "epochs (the baseline's schedule); sfw trained 10 epochs from scratch itself"
    ) in matrix_part
    html = (tmp_path / "r" / "report.html").read_text()
    assert "sfw trained 10 epochs from scratch itself" in html
    # a report without such rows says nothing about it
    plain = write_report(records, tmp_path / "p").markdown.read_text()
    assert "From the architecture's initialisation" not in plain


def test_the_epochs_a_method_trained_are_shown_beside_its_result(decided, tmp_path):
    """sfp trained 3 epochs inside its pruning at 70% (seeds 0 and 1: 2 and 4); the peer none.
    prunekit's best is named with that budget, the peer without one, and the detail table and
    the JSON carry the figure."""
    for rec in decided:
        if rec.config["method"] == "sfp" and not rec.config.get("distill"):
            rec.metrics["method_epochs"] = 2 + 2 * rec.config["seed"]
        elif rec.config["method"] == "peer:tp_l2":
            rec.metrics["method_epochs"] = 0
    files = write_report(decided, tmp_path)
    text = files.markdown.read_text()
    versus = markdown_rows(
        section(text, "Decision matrix")
        .split("prunekit's best against the peers' best:")[1]
        .split("Distilled")[0]
    )
    at70 = next(v for v in versus if v["target"] == "flops -70%")
    assert (at70["prunekit's best"], at70["peer's best"]) == (
        "sfp (+3 epochs in the method)",
        "peer:tp_l2",
    )
    detail = [r for r in markdown_rows(text) if r.get("method") == "sfp" and "prune s" in r]
    assert {r["target"]: r["epochs in the method"] for r in detail}["flops 0.7"] == "3.0 ± 1.4"
    (m,) = json.loads(files.data.read_text())["matrices"]
    cells = {r["label"]: r["cells"] for r in m["rows"]}
    assert cells["sfp"][1]["method_epochs"]["mean"] == 3.0


def test_a_plot_of_many_methods_puts_its_legend_beside_the_panels():
    """Forty methods do not fit a legend inside a panel (it covered the curves of the every-method
    reports): past LEGEND_INSIDE series one figure legend holds every label, in columns of
    LEGEND_ROWS, beside the panels, and the figure is made wider and taller for it."""
    n = 40
    plot = plots.PlotSeries(
        "many",
        "many.png",
        "many",
        95.0,
        panels=[{"name": "flops", "title": "flops", "xlabel": "x"}],
        series=[
            {
                "panel": "flops",
                "label": f"m{i:02d}",
                "x": [30.0, 50.0],
                "y": [90.0, 80.0 + i / 10],
                "yerr": [0.5, 0.5],
            }
            for i in range(n)
        ],
    )
    fig = plots.render(plot)
    (ax,) = fig.get_axes()
    assert ax.get_legend() is None
    (legend,) = fig.legends
    shown = [t.get_text() for t in legend.get_texts()]
    assert sorted(shown) == ["dense baseline (95.00)"] + [f"m{i:02d}" for i in range(n)]
    assert legend._ncols == 2  # 43 entries at 24 rows a column
    width, height = fig.get_size_inches()
    assert width > 7.0 and height > 4.5
    few = plots.PlotSeries(
        "few", "few.png", "few", 95.0, panels=plot.panels, series=plot.series[:3]
    )
    fig_few = plots.render(few)
    assert fig_few.get_axes()[0].get_legend() is not None and not fig_few.legends
    assert tuple(fig_few.get_size_inches()) == (7.0, 4.5)
