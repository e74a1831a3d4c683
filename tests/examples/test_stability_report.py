"""The stability report against a hand-made results file with hand-computed answers.

Six test examples, three classes. The predictions are chosen by hand so every
accuracy and every majority vote below can be checked on paper:

    test_labels     0 1 2 0 1 2
    fft  seed 42    0 1 2 0 1 2   6/6
    fft  seed 52    0 0 0 0 0 0   2/6 (collapsed)
    fft  seed 62    0 1 0 0 2 2   4/6
    fft  seed 72    1 1 2 1 1 0   3/6
    dsgd seed 42    0 1 2 0 1 1   5/6
    dsgd seed 52    0 1 2 0 0 2   5/6
    dsgd seed 62    0 1 1 0 1 2   5/6
    focal seed 42   0 1 2 1 2 0   3/6
    focal seed 52   2 0 1 0 1 2   3/6
    focal seed 62   0 1 2 0 1 2   6/6

ENS(3) of fft (seeds 42, 52, 62) votes 0 1 0 0 0 2 (column 4 is a three-way
tie 1/0/2, won by class 0): 4/6 right. The vote of the three dsgd runs is
0 1 2 0 1 2: 6/6 right.

Missed classes (no example of the class predicted right): fft seed 52 misses
classes 1 and 2, fft seed 72 misses class 0 (its two 0s are predicted 1, 1);
every other run gets at least one example of each class right.

The majority-class rate is 2/6, so the one failed run (2 right or fewer) is fft
seed 52, which is also the one collapsed run (class 0 for every input).

The votes of every 3 of the 4 fft seeds, by hand: {42, 52, 62} 0 1 0 0 0 2 (4/6),
{42, 52, 72} 0 1 2 0 1 0 (5/6), {42, 62, 72} 0 1 2 0 1 2 (6/6), {52, 62, 72}
0 1 0 0 0 0 (3/6): ENS(3) is 18/24 = 75% on average, population std
sqrt(20) / 24 = 18.63 points.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from _lib import overview, stability_readme
from dsgd_jax.examples import stability_report as sr
from dsgd_jax.examples import stability_stats

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEST_LABELS = [0, 1, 2, 0, 1, 2]

# (label, seed, predictions, accuracy, macro_f1, collapsed, wall_time_s)
_RUNS = [
    # fft listed out of seed order on purpose: seed order must come from sorting.
    ("fft", 62, [0, 1, 0, 0, 2, 2], 4 / 6, 0.6, False, 30.0),
    ("fft", 42, [0, 1, 2, 0, 1, 2], 6 / 6, 0.9, False, 30.0),
    ("dsgd", 42, [0, 1, 2, 0, 1, 1], 5 / 6, 0.8, False, 400.0),
    ("fft", 52, [0, 0, 0, 0, 0, 0], 2 / 6, 0.2, True, 30.0),
    ("fft", 72, [1, 1, 2, 1, 1, 0], 3 / 6, 0.5, False, 30.0),
    ("dsgd", 52, [0, 1, 2, 0, 0, 2], 5 / 6, 0.8, False, 420.0),
    ("dsgd", 62, [0, 1, 1, 0, 1, 2], 5 / 6, 0.8, False, 440.0),
    ("focal", 42, [0, 1, 2, 1, 2, 0], 3 / 6, 0.4, False, 60.0),
    ("focal", 52, [2, 0, 1, 0, 1, 2], 3 / 6, 0.3, False, 60.0),
    ("focal", 62, [0, 1, 2, 0, 1, 2], 6 / 6, 1.0, False, 60.0),
]

# Eval accuracy per epoch; fft seed 72 stopped after epoch 2, so fft's curve has epochs 1-2.
_EPOCHS = {
    ("fft", 42): [0.5, 0.7, 0.9],
    ("fft", 52): [0.3, 0.5, 0.4],
    ("fft", 62): [0.4, 0.6, 0.6],
    ("fft", 72): [0.2, 0.4],
    ("dsgd", 42): [0.6, 0.7, 0.8],
    ("dsgd", 52): [0.6, 0.8, 0.8],
    ("dsgd", 62): [0.6, 0.9, 0.8],
    ("focal", 42): [0.3, 0.5, 0.5],
    ("focal", 52): [0.3, 0.4, 0.5],
    ("focal", 62): [0.6, 0.8, 1.0],
}


def _trace(cosines):
    return [
        {"step": 5 * (i + 1), "cosine": c, "total_norm": 1.0 + i, "fraction_correct": 0.1 * i}
        for i, c in enumerate(cosines)
    ]


def _results(*, traces=True):
    runs = []
    for label, seed, predictions, accuracy, macro_f1, collapsed, wall in _RUNS:
        trace = []
        if traces and seed == 42 and label == "fft":
            trace = _trace([-0.3, -0.5, 0.1])
        if traces and seed == 42 and label == "dsgd":
            trace = _trace([-0.2, 0.0, 0.2])
        runs.append(
            {
                "label": label,
                "method": label,
                "seed": seed,
                "accuracy": accuracy,
                "macro_f1": macro_f1,
                "collapsed": collapsed,
                "wall_time_s": wall,
                "predictions": predictions,
                "epoch_metrics": [
                    {"epoch": e + 1, "accuracy": a, "macro_f1": a / 2}
                    for e, a in enumerate(_EPOCHS[label, seed])
                ],
                "conflict_trace": trace,
                "config": {},
            }
        )
    return {
        "example": "bert",
        "task": "toy",
        "class_names": ["negative", "neutral", "positive"],
        "test_labels": list(TEST_LABELS),
        "runs": runs,
    }


@pytest.fixture
def saved_figures(monkeypatch):
    """The figures the plotting functions save, in order."""
    from matplotlib.figure import Figure

    figures = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figures


def _is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == PNG_SIGNATURE


def test_hand_made_accuracies_match_predictions():
    # Guards the fixture itself: the stated accuracies are those of the predictions.
    for _, _, predictions, accuracy, *_ in _RUNS:
        assert np.mean(np.array(predictions) == np.array(TEST_LABELS)) == pytest.approx(accuracy)


def test_load_results(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_results()))
    assert stability_stats.load_results(path) == _results()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"runs": []}))
    with pytest.raises(ValueError, match=r"bad\.json.*'test_labels'"):
        stability_stats.load_results(bad)


def test_method_stats():
    stats = stability_stats.method_stats(_results())
    assert list(stats) == ["fft", "dsgd", "focal"]  # order of first appearance
    fft = stats["fft"]
    assert fft["n"] == 4
    assert fft["seeds"] == [42, 52, 62, 72]
    assert fft["accuracy_mean"] == pytest.approx(15 / 24)
    # Population std by hand: deviations 9/24, -7/24, 1/24, -3/24 from 15/24.
    assert fft["accuracy_std"] == pytest.approx(math.sqrt((81 + 49 + 1 + 9) / 576 / 4))
    assert fft["accuracy_std"] == pytest.approx(np.std([1.0, 2 / 6, 4 / 6, 3 / 6]))
    assert fft["macro_f1_mean"] == pytest.approx(0.55)
    assert fft["macro_f1_std"] == pytest.approx(np.std([0.9, 0.2, 0.6, 0.5]))
    assert fft["accuracy_min"] == pytest.approx(2 / 6)
    assert fft["accuracy_max"] == pytest.approx(1.0)
    assert fft["collapsed"] == fft["failed"] == fft["mostly_one_class"] == 1
    assert fft["failed_seeds"] == [52]
    assert fft["learned_mean"] == pytest.approx((6 + 4 + 3) / 18)
    # Escape epochs: 6 x accuracy must exceed 2; seed 72 (epochs 0.2, 0.4) never does.
    assert fft["escape_epochs"] == [1, 2, 2, None]
    assert fft["representation_cosine"] == [None] * 4
    assert fft["wall_time_mean"] == pytest.approx(30.0)
    assert fft["missing_class"] == 2  # seeds 52 and 72
    assert stats["dsgd"]["missing_class"] == stats["focal"]["missing_class"] == 0
    assert stats["dsgd"]["accuracy_std"] == pytest.approx(0.0, abs=1e-12)
    assert stats["dsgd"]["wall_time_mean"] == pytest.approx(420.0)
    assert stats["dsgd"]["collapsed"] == stats["dsgd"]["failed"] == 0
    assert stats["dsgd"]["learned_mean"] == pytest.approx(5 / 6)
    # focal: 3/6, 3/6, 6/6 -> mean 2/3, population std sqrt(1/18).
    assert stats["focal"]["accuracy_mean"] == pytest.approx(2 / 3)
    assert stats["focal"]["accuracy_std"] == pytest.approx(math.sqrt(1 / 18))


def test_majority_vote_ties_go_to_the_lowest_class():
    predictions = np.array(
        [
            [2, 1, 2, 2, 1],
            [2, 0, 1, 1, 1],
            [0, 2, 2, 1, 0],
            [1, 0, 1, 0, 0],
        ]
    )
    # Columns: 2 wins 2:1:1; 0 wins 2:1:1; 1 and 2 tie 2:2 -> 1; 1 wins 2:1:1;
    # 1 and 0 tie 2:2 -> 0.
    np.testing.assert_array_equal(stability_stats.majority_vote(predictions, 3), [2, 0, 1, 1, 0])
    np.testing.assert_array_equal(stability_stats.majority_vote([[3, 0], [1, 2]], 4), [1, 0])
    np.testing.assert_array_equal(stability_stats.majority_vote([[2, 0, 1]], 3), [2, 0, 1])
    with pytest.raises(ValueError):
        stability_stats.majority_vote([[0, 3]], 3)


def test_ensemble_stats_over_every_subset():
    results = _results()
    e = stability_stats.ensemble_stats(results, "fft", 3)
    assert e["subsets"] == 4
    assert e["accuracy_mean"] == pytest.approx(18 / 24)
    assert e["accuracy_std"] == pytest.approx(math.sqrt(20) / 24)
    assert (e["accuracy_min"], e["accuracy_max"]) == pytest.approx((3 / 6, 1.0))
    one = stability_stats.ensemble_stats(results, "fft", 1)  # every single run
    assert one["subsets"] == 4 and one["accuracy_mean"] == pytest.approx(15 / 24)
    assert stability_stats.ensemble_stats(results, "dsgd", 3)["accuracy_mean"] == pytest.approx(1.0)
    assert stability_stats.ensemble_stats(results, "fft", 5) is None
    assert stability_stats.ensemble_stats(results, "missing", 1) is None


def test_ensemble_rows():
    results = _results()
    rows = stability_stats.ensemble_rows(results)
    # fft has 4 runs (only ENS(3) fits), dsgd 3 (no DSGD(9)).
    assert [r["method"] for r in rows] == ["ENS(3)"]
    assert rows[0]["k"] == 3 and rows[0]["subsets"] == 4
    assert rows[0]["accuracy_mean"] == pytest.approx(18 / 24)
    rows = stability_stats.ensemble_rows(results, ks=(1, 3, 4, 5), dsgd_k=3)
    assert [r["method"] for r in rows] == ["ENS(1)", "ENS(3)", "ENS(4)", "DSGD(3)"]
    # ENS(4) votes 0 1 0 0 1 0 (column 2: 2,0,0,2 tie -> 0; column 4: 1,0,2,1 -> 1;
    # column 5: 2,0,2,0 tie -> 0): columns 2 and 5 wrong -> 4/6.
    assert [r["accuracy_mean"] for r in rows] == pytest.approx([15 / 24, 18 / 24, 4 / 6, 1.0])
    assert stability_stats.ensemble_rows(results, base="focal", ks=(3,), dsgd="none")[0][
        "accuracy_mean"
    ] == pytest.approx(1.0)  # focal votes 0 1 2 0 1 2


def test_markdown_table():
    table = sr.markdown_table(_results())
    lines = table.strip().splitlines()
    assert len(lines) == 2 + 3 + 1  # header, rule, 3 labels, ENS(3)
    assert lines[0].startswith("| method | seeds | accuracy")
    fft, dsgd, focal, ens = lines[2:]
    assert fft.startswith("| fft | 4 | 62.50 ± 24.65 | 55.00 ± ")
    # failed, collapsed, 95% one class, missing a class: seed 52 is all three, 72 misses 0.
    assert "| 33.33 | 100.00 | 1/4 | 1/4 | 1/4 | 2/4 | 30 s |" in fft
    assert dsgd.startswith("| dsgd | 3 | 83.33 ± 0.00 | 80.00 ± 0.00 |")
    assert "| 0/3 | 0/3 | 0/3 | 0/3 | 7.0 min |" in dsgd
    assert focal.startswith("| focal | 3 | 66.67 ± 23.57 |")
    assert ens == "| ENS(3) | 4 | 75.00 ± 18.63 | — | — | — | — | — | — | — | — |"
    assert all(line.count("|") == 12 for line in lines)
    assert "DSGD(9)" not in table


def test_markdown_table_dsgd9_row():
    results = _results()
    extra = copy.deepcopy([r for r in results["runs"] if r["label"] == "dsgd"])
    for i in range(6):  # six more dsgd seeds, all predicting every example right
        extra.append({**extra[0], "seed": 72 + 10 * i, "predictions": list(TEST_LABELS)})
    results["runs"] = [r for r in results["runs"] if r["label"] != "dsgd"] + extra
    table = sr.markdown_table(results)
    assert "| DSGD(9) | 1 | 100.00 ± 0.00 | — |" in table
    assert "| dsgd | 9 |" in table


def test_seed_table():
    results = _results()
    results["runs"][3]["representation_cosine"] = 0.98765  # fft seed 52
    lines = sr.seed_table(results).strip().splitlines()
    assert len(lines) == 2 + 10
    rows = {tuple(line.split(" | ")[:2]): line for line in lines[2:]}
    # fft 42: learned at epoch 1; its trace -0.3, -0.5, 0.1 at fractions correct 0, 0.1,
    # 0.2: the first step (no correct example) is left out: mean -0.2, 1 of 2 negative.
    assert rows["| fft", "42"] == "| fft | 42 | 100.00 | no | no | 1 | — | -0.200 | 50% | 0% |"
    assert rows["| fft", "52"] == "| fft | 52 | 33.33 | yes | yes | 2 | 0.988 | — | — | — |"
    assert rows["| fft", "72"].startswith("| fft | 72 | 50.00 | no | no | never |")


def test_trace_stats():
    run = {"conflict_trace": _trace([0.0, -0.9, -0.6, -0.4, 0.2, 0.5])}
    # _trace's first step has fraction correct 0 (no correct examples): left out.
    assert stability_stats.trace_stats(run) == {
        "steps": 5,
        "cosine_mean": pytest.approx(-0.24),
        "negative_share": 0.6,
        "below_half_share": 0.4,
    }
    assert stability_stats.trace_stats({"conflict_trace": []}) is None
    assert stability_stats.trace_stats({"conflict_trace": _trace([0.0])}) is None


def test_escape_epoch_and_run_failures():
    run = {"predictions": [0, 0, 0, 0], "epoch_metrics": [{"epoch": 2, "accuracy": 0.5}]}
    # Labels 0 0 1 1: majority rate 1/2; 2 right of 4 is not above it.
    f = stability_stats.run_failures(run, [0, 0, 1, 1])
    assert f["collapsed"] and f["failed"] and f["escape_epoch"] is None
    run["epoch_metrics"].append({"epoch": 1, "accuracy": 0.75})  # out of order on purpose
    assert stability_stats.escape_epoch(run, [0, 0, 1, 1]) == 1
    with pytest.raises(ValueError, match="no predictions"):
        stability_stats.run_failures({"label": "fft", "seed": 1}, [0, 1])


def test_plot_seed_accuracy(tmp_path, saved_figures):
    path = sr.plot_seed_accuracy(_results(), tmp_path / "seeds.png")
    assert path == tmp_path / "seeds.png"
    assert _is_png(path)
    (fig,) = saved_figures
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fft", "dsgd", "focal"]
    assert "bert" in ax.get_title() and "toy" in ax.get_title()
    # One red x: the failed fft seed 52 at 2/6; the majority rate 2/6 as a dotted line.
    legend = ax.get_legend()
    assert {t.get_text() for t in legend.get_texts()} == {
        "failed run (≤ majority rate)",
        "majority rate",
    }
    (majority,) = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    np.testing.assert_allclose(majority.get_ydata(), [100 * 2 / 6] * 2)
    red = [c for c in ax.collections if np.allclose(c.get_edgecolor()[0], [1, 0, 0, 1])]
    assert len(red) == 1
    np.testing.assert_allclose(red[0].get_offsets()[:, 1], [100 * 2 / 6])


def test_plot_seed_accuracy_is_deterministic(tmp_path):
    a = sr.plot_seed_accuracy(_results(), tmp_path / "a.png").read_bytes()
    b = sr.plot_seed_accuracy(_results(), tmp_path / "b.png").read_bytes()
    assert a == b


def test_plot_epoch_curves(tmp_path, saved_figures):
    path = sr.plot_epoch_curves(_results(), tmp_path / "epochs.png")
    assert _is_png(path)
    (fig,) = saved_figures
    (ax,) = fig.axes
    lines = {line.get_label().split(" ")[0]: line for line in ax.get_lines()}
    assert set(lines) == {"fft", "dsgd", "focal"}
    # fft: only epochs 1 and 2 are on all four seeds.
    np.testing.assert_allclose(lines["fft"].get_xdata(), [1, 2])
    np.testing.assert_allclose(lines["fft"].get_ydata(), [100 * 1.4 / 4, 100 * 2.2 / 4])
    np.testing.assert_allclose(lines["dsgd"].get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(lines["dsgd"].get_ydata(), [60, 80, 80])
    assert len(ax.collections) == 3  # one mean ± std band per label


def test_plot_conflict_trace(tmp_path, saved_figures):
    results = _results()
    results["runs"][3]["conflict_trace"] = _trace([-0.9, -0.8, -0.7])  # fft seed 52, failed
    path = sr.plot_conflict_trace(results, tmp_path / "conflict.png")
    assert _is_png(path)
    (fig,) = saved_figures
    assert len(fig.axes) == 3
    top, middle, bottom = fig.axes
    labels = [t.get_text() for t in top.get_legend().get_texts()]
    assert labels == ["fft", "dsgd", "failed seed"]
    runs = {line.get_label(): line for line in top.get_lines()}
    assert set(runs) >= {"fft (seed 42)", "fft (seed 52)", "dsgd (seed 42)"}
    np.testing.assert_allclose(runs["fft (seed 42)"].get_xdata(), [5, 10, 15])
    # The first step's batch has no correct example (fraction 0): its cosine is left out.
    np.testing.assert_allclose(runs["fft (seed 42)"].get_ydata(), [np.nan, -0.5, 0.1])
    np.testing.assert_allclose(runs["fft (seed 52)"].get_ydata(), [np.nan, -0.8, -0.7])
    # One colour per method; the failed seed dashed, the others solid.
    assert runs["fft (seed 42)"].get_color() == runs["fft (seed 52)"].get_color()
    assert runs["fft (seed 42)"].get_color() != runs["dsgd (seed 42)"].get_color()
    assert runs["fft (seed 52)"].get_linestyle() == "--"
    assert runs["fft (seed 42)"].get_linestyle() == "-"
    dsgd_norms = [line for line in middle.get_lines() if line.get_label() == "dsgd (seed 42)"]
    np.testing.assert_allclose(dsgd_norms[0].get_ydata(), [1, 2, 3])
    np.testing.assert_allclose(bottom.get_lines()[1].get_ydata(), [0, 0.1, 0.2])
    assert len(top.get_lines()) == 4  # three runs and the zero line


def test_plot_representation(tmp_path, saved_figures):
    results = _results()
    with pytest.raises(ValueError, match="representation_cosine"):
        sr.plot_representation(results, tmp_path / "none.png")
    for run, cosine in zip(results["runs"], np.linspace(0.1, 0.9, 10), strict=True):
        run["representation_cosine"] = float(cosine)
    path = sr.plot_representation(results, tmp_path / "representation.png")
    assert _is_png(path)
    (fig,) = saved_figures
    (ax,) = fig.axes
    red = [c for c in ax.collections if np.allclose(c.get_edgecolor()[0], [1, 0, 0, 1])]
    assert len(red) == 1  # the failed fft seed 52, the fourth run: cosine 0.1 + 3 * 0.8 / 9
    np.testing.assert_allclose(red[0].get_offsets(), [[0.1 + 3 * 0.8 / 9, 100 * 2 / 6]])


def test_plot_conflict_trace_without_traces(tmp_path):
    with pytest.raises(ValueError, match=r"no conflict traces.*--conflict_every"):
        sr.plot_conflict_trace(_results(traces=False), tmp_path / "conflict.png")
    assert not (tmp_path / "conflict.png").exists()


def test_write_report(tmp_path):
    paths = sr.write_report(_results(), tmp_path / "report")
    assert set(paths) == {"table", "seed_accuracy", "epoch_curves", "conflict_trace"}
    table = paths["table"].read_text()
    assert table == sr.markdown_table(_results()) + "\nPer seed:\n\n" + sr.seed_table(_results())
    for name in ("seed_accuracy", "epoch_curves", "conflict_trace"):
        assert paths[name].parent == tmp_path / "report"
        assert _is_png(paths[name])
    paths = sr.write_report(_results(traces=False), tmp_path / "no_trace")
    assert set(paths) == {"table", "seed_accuracy", "epoch_curves"}
    assert not (tmp_path / "no_trace" / "conflict_trace.png").exists()


def test_missed_classes():
    assert stability_stats.missed_classes([0, 1, 2, 0, 1, 2], TEST_LABELS) == []
    assert stability_stats.missed_classes([0, 0, 0, 0, 0, 0], TEST_LABELS) == [1, 2]
    assert stability_stats.missed_classes([1, 1, 2, 1, 1, 0], TEST_LABELS) == [0]
    # A class absent from the test labels cannot be missed.
    assert stability_stats.missed_classes([0, 0, 1], [0, 0, 1]) == []
    with pytest.raises(ValueError, match="2 predictions for 3 test labels"):
        stability_stats.missed_classes([0, 1], [0, 1, 2])


def _setting(results, task, lr):
    return {**results, "task": task, "base_config": {"max_length": 32, "learning_rate": lr}}


def test_overview_table():
    only_fft = _setting(_results(), "fft-only", 1e-4)
    only_fft["runs"] = [r for r in only_fft["runs"] if r["label"] == "fft"]
    no_others = _setting(_results(), "two", 5e-5)
    no_others["runs"] = [r for r in no_others["runs"] if r["label"] != "focal"]
    table = overview.overview_table([_setting(_results(), "toy", 2e-5), only_fft, no_others])
    lines = table.strip().splitlines()
    assert len(lines) == 2 + 2  # the fft-only setting has no row
    # macro-F1 of fft: 0.9, 0.2, 0.6, 0.5 -> mean 0.55, deviations +-0.35, +-0.05,
    # population std sqrt((2 * 0.1225 + 2 * 0.0025) / 4) = 0.25.
    assert lines[2] == (
        "| BERT · toy · 32 tokens · lr 2e-5 | 4/3 | 62.50 ± 24.65 | 83.33 ± 0.00 "
        "| 55.00 ± 25.00 | 80.00 ± 0.00 | 1/0 | 1/0 | 2/0 | yes | focal 66.67 ± 23.57 |"
    )
    assert lines[3].startswith("| BERT · two · 32 tokens · lr 5e-5 | 4/3 |")
    assert lines[3].endswith("| 1/0 | 1/0 | 2/0 | yes | — |")


def test_verdict_counts_failures_and_names_what_the_setting_can_test():
    results = _results()
    for seed in (42, 52, 62):  # a method that predicts class 0 everywhere: 2/6, std 0
        collapsed = {**results["runs"][3], "label": "lora", "method": "lora", "seed": seed}
        results["runs"].append(collapsed)
    # fft 15/24 (std 24.65; seed 52 failed and collapsed; seeds 52 and 72 miss a class),
    # dsgd 5/6 on every seed, focal 4/6 (std 23.57), lora 2/6 on every seed; no ENS(9).
    text = stability_readme.verdict(results)
    assert "20.83 points above FFT's (83.33 vs 62.50)" in text
    assert "0.00 vs 24.65" in text
    assert "DSGD 0 of 3, FFT 1 of 4; collapsed onto one class: DSGD 0, FFT 1." in text
    # FFT fails on 1 of 4 seeds: the setting can test the claim; the other three average
    # (6 + 4 + 3) / 18 = 72.22.
    assert "seed-unstable here: 1 of 4 seeds fail" in text and "average 72.22" in text
    assert "DSGD 0 of 3, FFT 2 of 4." in text  # missing a class
    assert "lora (0.00, every run failed)" in text
    assert "More failed runs than DSGD (0 of 3): lora 3 of 3." in text
    assert "ENS(9)" not in text
    one_dsgd_fail = copy.deepcopy(results)
    one_dsgd_fail["runs"][2]["predictions"] = [1] * 6  # dsgd seed 42: 2/6, failed
    text = stability_readme.verdict(one_dsgd_fail)
    assert "Fewer failed runs than DSGD (1 of 3): focal 0 of 3." in text


def _all_majority(results):
    """``results`` with every fft and dsgd run predicting class 0 (2/6, collapsed)."""
    results = copy.deepcopy(results)
    for run in results["runs"]:
        if run["label"] in ("fft", "dsgd"):
            run.update(predictions=[0] * 6, accuracy=2 / 6, macro_f1=0.2, collapsed=True)
    return results


def test_verdict_when_every_fft_seed_fails_or_none_does():
    text = stability_readme.verdict(_all_majority(_results()))
    # Both 2/6 on every seed: a tie is no gap "below", and the setting cannot test the claim.
    assert "equals FFT's (33.33)" in text and "points below" not in text
    assert "DSGD 3 of 3, FFT 4 of 4" in text
    assert "FFT fails on every seed here" in text and "seed-unstable" not in text
    never = _results()
    never["runs"] = [r for r in never["runs"] if (r["label"], r["seed"]) != ("fft", 52)]
    text = stability_readme.verdict(never)
    assert "FFT fails on no seed here" in text and "DSGD 0 of 3, FFT 0 of 3" in text


def test_overview_verdict():
    one = _setting(_results(), "toy", 2e-5)
    wide = _setting(_results(), "wide", 1e-4)
    for run in wide["runs"]:  # fft spread 0 here (accuracy field), dsgd above it in mean
        if run["label"] == "fft":
            run["accuracy"] = 0.5
    text = stability_readme.overview_verdict(overview.overview_rows([one, wide]))
    # dsgd 5/6 beats fft's mean (15/24, then 1/2) in both; its std 0 is below fft's
    # 24.65 only in the first, since fft's std is 0 in the second.
    assert "Over 2 settings, DSGD's mean accuracy is above FFT's in 2" in text
    assert "its seed spread (std) is below FFT's in 1." in text
    # Failures come from the predictions: fft seed 52 fails in both settings.
    assert "FFT 2 of 8, DSGD 0 of 6; collapsed onto one class: FFT 2, DSGD 0." in text
    assert "some seeds but not all in 2 settings" in text
    assert "there FFT fails on 2 of 8 runs and DSGD on 0 of 6" in text
    assert "fewer failed runs in 2 and more in 0, a higher mean in 2 and a lower spread in 1" in (
        text
    )
    # ... and per setting: fft's seed 52 fails in both, its mean 62.50 then 50.00 (the
    # wide setting's fft accuracies are all 0.5); dsgd 5/6 on every seed.
    assert (
        "BERT · toy · 32 tokens · lr 2e-5: 1 of 4 against 0 of 3 (62.50 against 83.33); "
        "BERT · wide · 32 tokens · lr 1e-4: 1 of 4 against 0 of 3 (50.00 against 83.33)."
    ) in text
    assert "never predict some class right: FFT 4, DSGD 0." in text
    assert "FFT's seed spread is widest on BERT · toy · 32 tokens · lr 2e-5 (24.65 points)." in text
    assert (
        "Other methods ran on BERT · toy · 32 tokens · lr 2e-5, BERT · wide · 32 tokens · lr 1e-4."
        in text
    )
    # focal (2/3) does not reach dsgd (5/6) in mean accuracy anywhere.
    assert "matched or beaten" not in text
    # With two examples, the widest spread is named per example.
    vit = {**wide, "example": "vit", "task": "digits"}
    vit["runs"] = [r for r in vit["runs"] if r["label"] != "focal"]
    text = stability_readme.overview_verdict(overview.overview_rows([one, vit]))
    assert (
        "FFT's seed spread is widest on BERT · toy · 32 tokens · lr 2e-5 (24.65 points) among "
        "the BERT settings and on ViT · digits · 32 tokens · lr 1e-4 (0.00 points) among the "
        "ViT settings." in text
    )
    dead = _all_majority(_setting(_results(), "dead", 1e-5))
    text = stability_readme.overview_verdict(overview.overview_rows([one, dead]))
    assert "FFT 5 of 8, DSGD 3 of 6" in text
    assert "in 1 setting (BERT · toy · 32 tokens · lr 2e-5)" in text
    assert "FFT fails on every seed on BERT · dead · 32 tokens · lr 1e-5 (DSGD 3 of 3)" in text
    never = _setting(_results(), "never", 1e-4)
    never["runs"] = [r for r in never["runs"] if (r["label"], r["seed"]) != ("fft", 52)]
    text = stability_readme.overview_verdict(overview.overview_rows([never]))
    assert "No setting makes FFT fail on some seeds but not on others" in text
    assert "FFT fails on no seed in 1 setting." in text
    assert stability_readme.overview_verdict([]) == "No setting has both FFT and DSGD runs yet."


def test_plot_overview(tmp_path, saved_figures):
    only_fft = _setting(_results(), "fft-only", 1e-4)
    only_fft["runs"] = [r for r in only_fft["runs"] if r["label"] == "fft"]
    settings = [_setting(_results(), "toy", 2e-5), only_fft, _setting(_results(), "b", 1e-4)]
    path = overview.plot_overview(settings, tmp_path / "overview.png")
    assert _is_png(path)
    (fig,) = saved_figures
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == [
        "BERT · toy · 32 tokens · lr 2e-5",
        "BERT · b · 32 tokens · lr 1e-4",
    ]
    ax = visible[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fft", "dsgd"]
    red = [c for c in ax.collections if np.allclose(c.get_edgecolor()[0], [1, 0, 0, 1])]
    assert len(red) == 1  # the collapsed fft seed 52
    np.testing.assert_allclose(red[0].get_offsets()[:, 1], [100 * 2 / 6])
    # The mean marks of the error bars: fft 15/24, dsgd 5/6.
    means = [line.get_ydata()[0] for line in ax.get_lines() if line.get_marker() == "o"]
    np.testing.assert_allclose(means, [100 * 15 / 24, 100 * 5 / 6])
    with pytest.raises(ValueError, match="no results with both 'fft' and 'dsgd'"):
        overview.plot_overview([only_fft], tmp_path / "none.png")


def test_results_block_overview_only_with_fft_and_dsgd(tmp_path):
    def folder(name, results):
        results = {
            **_setting(results, name, 1e-4),
            "command": f"python benchmarks/stability.py --out={name}",
            "machine": {"cpu": "cpu", "cores": "2", "device": "cpu", "jax": "x", "flax": "y"},
            "missing": [],
        }
        results["base_config"]["num_epochs"] = 3
        path = tmp_path / "benchmarks/results/stability" / name
        path.mkdir(parents=True)
        (path / "results.json").write_text(json.dumps(results))
        return path

    fft_only = _results()
    fft_only["runs"] = [r for r in fft_only["runs"] if r["label"] == "fft"]
    a = folder("a", fft_only)
    section = stability_readme.readme_section([a], tmp_path)
    assert "| setting |" not in section and stability_readme.OVERVIEW_PLOT not in section
    assert "\n### BERT · a · 32 tokens · lr 1e-4 · 3 epochs\n" in section  # its own heading
    b = folder("b", _results())
    section = stability_readme.readme_section([a, b], tmp_path)
    assert section.count("| BERT · ") == 1  # the overview row of b only
    assert f"]({stability_readme.OVERVIEW_PLOT})" in section
    assert section.count("\n### ") == 2  # one section per setting
    assert "Over 1 setting, DSGD's mean accuracy is above FFT's in 1" in section


def test_load_settings_in_setting_order(tmp_path):
    # Folder names sort one way (a-tweets < lr1e-4 < lr2e-5 < lr3e-4 < vit < x-first),
    # settings another.
    settings = {
        "x-first": ("bert", "drugs", 64, 5e-5),
        "lr1e-4": ("bert", "drugs", 64, 1e-4),
        "lr2e-5": ("bert", "drugs", 64, 2e-5),
        "lr3e-4": ("bert", "drugs", 128, 1e-5),
        "vit": ("vit", "a", None, 2e-3),
        "a-tweets": ("bert", "tweets2", 64, 1e-4),
    }
    for name, (example, task, length, lr) in settings.items():
        config = {"learning_rate": lr}
        if length is not None:
            config["max_length"] = length
        results = {**_results(), "example": example, "task": task, "base_config": config}
        path = tmp_path / "benchmarks/results/stability" / name
        path.mkdir(parents=True)
        (path / "results.json").write_text(json.dumps(results))
    order = [
        folder.name
        for folder, _ in stability_readme.load_settings(stability_readme.results_folders(tmp_path))
    ]
    assert order == ["lr2e-5", "x-first", "lr1e-4", "lr3e-4", "a-tweets", "vit"]


def test_markdown_tables_align_columns_and_refuse_ragged_rows():
    from dsgd_jax.examples import markdown

    text = markdown.table(["a", "b", "c"], [[1, 2.5, "x"]], "rc")
    assert text.splitlines() == ["| a | b | c |", "|---:|:---:|---|", "| 1 | 2.5 | x |"]
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        markdown.table(["a", "b", "c"], [[1, 2]])
    with pytest.raises(ValueError, match="align='rx'"):
        markdown.table(["a", "b"], [], "rx")


def test_fisher_exact_against_hand_computed_tables():
    from _lib import summary

    # 3/10 against 5/10 failed, 8 failures in 20 runs: P(k failures in the first 10) =
    # C(10, k) C(10, 8 - k) / C(20, 8); the tables no more likely than k = 3 (30240 of
    # 125970) are k = 0, 1, 2, 3 and their mirrors 5, 6, 7, 8: 2 (45 + 1200 + 9450 + 30240).
    assert summary.fisher_exact(3, 10, 5, 10) == pytest.approx(81870 / 125970, rel=1e-12)
    # 0/2 against 2/2: the tables k = 0, 1, 2 have chances 1/6, 4/6, 1/6.
    assert summary.fisher_exact(0, 2, 2, 2) == pytest.approx(1 / 3, rel=1e-12)
    assert summary.fisher_exact(1, 4, 1, 4) == pytest.approx(1.0)


def test_baseline_ranking_orders_methods_by_failed_share_then_accuracy():
    from _lib import summary

    results = _setting(_results(), "toy", 2e-5)
    for seed in (42, 52, 62):  # lora predicts class 0 everywhere: 2/6, failed
        results["runs"].append(
            {**results["runs"][3], "label": "lora", "method": "lora", "seed": seed}
        )
    stable = _setting(_results(), "stable", 1e-4)
    stable["runs"] = [r for r in stable["runs"] if (r["label"], r["seed"]) != ("fft", 52)]
    setting, methods = summary.baseline_ranking(overview.overview_rows([stable, results]))
    assert setting == "BERT · toy · 32 tokens · lr 2e-5"  # the only one where FFT fails some
    # dsgd 0/3 at 5/6 and focal 0/3 at 4/6, then fft 1/4, then lora 3/3.
    assert [(name, s["failed"], s["n"]) for name, s in methods] == [
        ("DSGD", 0, 3), ("focal", 0, 3), ("FFT", 1, 4), ("lora", 3, 3),
    ]  # fmt: skip
    # Without two other methods at a testable setting there is no ranking.
    results["runs"] = [r for r in results["runs"] if r["label"] != "lora"]
    assert summary.baseline_ranking(overview.overview_rows([stable, results])) is None
