"""Hostile report.json files and user strings: no markup injects into HTML, Markdown or the terminal, no file outside
the report's folder is opened, a field of the wrong type exits 2 naming the file and the key, and the gate's exit code
survives whatever the names contain."""

import json
import re
from html.parser import HTMLParser

import pytest
import torch
from helpers import assert_usage_error, files_under, run_cli

from auditnn.report.html import to_html
from auditnn.report.schema import Report, metric_row
from auditnn.report.tables import fmt
from auditnn.report.writers import PICTURES, md_text, to_markdown

SCRIPT = "<script>alert(1)</script>"
MARKUP = "[/bold]"
CHECK = "robust enough"


def _report(check=CHECK, classes=("zero", "one"), attribute="place", place="water", warning="ok"):
    """A small valid audit report: an attack section, a groups section, a verdict and its metric rows."""
    rows = [metric_row("attack", "robust_accuracy", 0.4, method="pgd", norm="linf", eps=8 / 255, steps=10, check=check)]
    attack_row = {
        "method": "pgd",
        "norm": "linf",
        "eps": 8 / 255,
        "steps": 10,
        "check": check,
        "target": "random",
        "restarts": 3,
        "clean_accuracy": 0.9,
        "robust_accuracy": 0.4,
        "success_rate": 0.5,
        "mean_perturbation": 0.03,
        "max_perturbation": 0.031,
        "seconds": 1.5,
        "images_per_second": 100.0,
    }
    groups = {
        "attribute": attribute,
        "n": 4,
        "model": "mlp",
        "check": "groups",
        "worst_group": f"{classes[0]} x {place}",
        "associated_class": {place: classes[1]},
        "accuracy": 0.75,
        "worst_group_accuracy": 0.5,
        "aligned_accuracy": 1.0,
        "conflicting_accuracy": 0.5,
        "gap": 0.5,
        "agreement_rate": 0.25,
        "groups": [{"group": f"{classes[0]} x {place}", "n": 2, "accuracy": 0.5}],
        "data": {"classes": list(classes)},
    }
    verdict = {
        "passed": False,
        "failed_checks": [check],
        "rows": [
            {
                "check": check,
                "kind": "attack",
                "metric": "robust_accuracy",
                "measured": 0.4,
                "bound": "min",
                "threshold": 0.5,
                "passed": False,
                "note": "",
            }
        ],
    }
    results = {
        "attack": {"rows": [attack_row], "model": "mlp", "data": {"n_test": 10, "classes": list(classes)}},
        f"groups/{check}": groups,
        "verdict": verdict,
    }
    return Report(
        "audit", "run", {}, {"device": "cpu"}, 0, results, rows, warnings=[{"code": "note", "message": warning}]
    )


def _write(tmp_path, report: Report | dict, name="report.json"):
    folder = tmp_path / "rep"
    folder.mkdir(exist_ok=True)
    data = report.to_dict() if isinstance(report, Report) else report
    (folder / name).write_text(json.dumps(data))
    return folder / name


class _Tags(HTMLParser):
    """Every start tag a browser would build from the page."""

    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


def _tags(page: str) -> list[str]:
    parser = _Tags()
    parser.feed(page)
    return parser.tags


# ---------------------------------------------------------------- fields of the wrong type: exit 2, file and key


WRONG_TYPES = [
    (lambda d: d.update(seed=SCRIPT), "key 'seed'", "an integer"),
    (
        lambda d: d["results"]["verdict"]["rows"][0].update(measured=SCRIPT),
        "key 'results.verdict.rows[0].measured'",
        "a number or null",
    ),
    (
        lambda d: d["results"]["verdict"]["rows"][0].update(threshold=SCRIPT),
        "results.verdict.rows[0].threshold",
        "a number",
    ),
    (lambda d: d["results"]["verdict"]["rows"][0].update(bound=SCRIPT), "results.verdict.rows[0].bound", "'min'"),
    (lambda d: d["metrics"][0].update(value="0.9"), "key 'metrics[0].value' is \"0.9\"", "a number or null"),
    (lambda d: d["metrics"][0].update(eps="8/255"), "key 'metrics[0].eps'", "a number"),
    (lambda d: d["results"]["attack"]["rows"][0].update(eps=[1]), "results.attack.rows[0].eps", "a number"),
    (lambda d: d["results"]["attack"]["data"].update(classes=[1, 2]), "results.attack.data.classes[0]", "a string"),
    (
        lambda d: d["results"][f"groups/{CHECK}"].update(associated_class={"water": 3}),
        "groups/robust enough.associated_class.water",
        "a string",
    ),
    (lambda d: d.update(metrics={"a": 1}), "key 'metrics'", "a list"),
    (lambda d: d["timings"].update(total="1s"), "key 'timings.total'", "a number"),
    (lambda d: d.update(pictures=3), "key 'pictures'", "a string or null"),
    (lambda d: d["warnings"][0].update(message=None), "key 'warnings[0].message'", "a string"),
    (lambda d: d.pop("run_id"), "key 'run_id' is missing", "a string"),
]


@pytest.mark.parametrize("command", ["show", "html", "gate"])
@pytest.mark.parametrize("spoil,key,allowed", WRONG_TYPES, ids=[w[1][:40] for w in WRONG_TYPES])
def test_a_field_of_the_wrong_type_exits_2_naming_the_file_and_the_key(capsys, tmp_path, command, spoil, key, allowed):
    data = _report().to_dict()
    data["timings"] = {"total": 1.0}
    spoil(data)
    path = _write(tmp_path, data)
    policy = tmp_path / "audit.toml"
    policy.write_text(f'[[check]]\nkind = "attack"\nname = "{CHECK}"\neps = "8/255"\nmin_robust_accuracy = 0.5\n')
    args = ("gate", path, "--policy", policy) if command == "gate" else ("report", command, path)
    code, _, err = run_cli(capsys, *args)
    assert_usage_error(code, err, str(path), key, f"allowed: {allowed}")
    assert not (tmp_path / "rep" / "report.html").exists()


def test_nan_and_infinity_are_not_numbers_of_a_report(capsys, tmp_path):
    text = json.dumps(_report().to_dict()).replace('"measured": 0.4', '"measured": NaN')
    (tmp_path / "report.json").write_text(text)
    code, _, err = run_cli(capsys, "report", "show", tmp_path / "report.json")
    assert_usage_error(code, err, "results.verdict.rows[0].measured", "NaN")


def test_fmt_never_passes_text_through():
    assert [fmt(0.5), fmt(None), fmt(3), fmt(1 / 3, 4)] == ["0.500", "-", "3", "0.3333"]
    for value in (SCRIPT, True, [0.5]):
        with pytest.raises(TypeError):
            fmt(value)


# ---------------------------------------------------------------- user strings: escaped everywhere


HOSTILE = {
    "check": SCRIPT,
    "classes": ("<img src=x onerror=alert(1)>", "one"),
    "attribute": "<b>place</b>",
    "place": "<iframe>",
    "warning": SCRIPT,
}


def test_the_html_page_escapes_every_user_string_and_number(capsys, tmp_path):
    path = _write(tmp_path, _report(**HOSTILE))
    code, _, err = run_cli(capsys, "report", "html", path)
    assert code == 0, err
    page = (tmp_path / "rep" / "report.html").read_text()
    # Only the page's own elements: no script, img, iframe or b built from the report's strings (the page's one
    # <b> is the warning's code).
    tags = _tags(page)
    assert (
        set(tags)
        <= {
            "html",
            "head",
            "meta",
            "title",
            "style",
            "body",
            "h1",
            "h2",
            "h3",
            "span",
            "p",
            "table",
            "tr",
            "th",
            "td",
            "div",
            "b",
        }
        and tags.count("b") == 1
    )
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert page == to_html(_report(**HOSTILE))


def test_the_markdown_summary_carries_names_literally():
    markdown = to_markdown(_report(**HOSTILE))
    assert "<" not in markdown.replace("<=", "") and ">" not in markdown.replace(">=", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in markdown
    assert "&lt;img src=x onerror=alert(1)&gt;" in markdown
    for row in (line for line in markdown.splitlines() if line.startswith("| ")):
        assert len(re.findall(r"(?<!\\)\|", row)) == row.count(" | ") + 2  # no cell split by a name's '|'


@pytest.mark.parametrize(
    "text,shown",
    [
        ("[a](javascript:alert(1))", "\\[a\\](javascript:alert(1))"),
        ("![x](http://t/p.png)", "\\!\\[x\\](http://t/p.png)"),
        ("a|b", "a\\|b"),
        ("**bold** _it_ `code` ~~s~~", "\\*\\*bold\\*\\* \\_it\\_ \\`code\\` \\~\\~s\\~\\~"),
        ("@team #12", "\\@team \\#12"),
        ("two\nlines", "two lines"),
        ("a & b <= c", "a &amp; b &lt;= c"),
        ("back\\slash", "back\\\\slash"),
        ("pgd linf eps=8/255 10 steps", "pgd linf eps=8/255 10 steps"),
    ],
)
def test_markdown_escaping_of_one_string(text, shown):
    assert md_text(text) == shown


def test_rich_markup_in_names_is_shown_literally_and_the_exit_code_survives(capsys, tmp_path):
    report = _report(check=f"{MARKUP} x [red]", classes=(f"{MARKUP}zero", "one"), warning=f"{MARKUP} warned")
    path = _write(tmp_path, report)
    code, out, _ = run_cli(capsys, "report", "show", path)
    assert code == 0
    assert f"{MARKUP} x [red]" in out and f"{MARKUP}zero" in out and f"{MARKUP} warned" in out
    policy = tmp_path / "audit.toml"
    policy.write_text(
        f'[[check]]\nkind = "attack"\nname = \'{MARKUP} x [red]\'\neps = "8/255"\nmin_robust_accuracy = 0.5\n'
    )
    code, out, _ = run_cli(capsys, "gate", path, "--policy", policy)
    assert code == 1 and f"{MARKUP} x [red]" in out


# ---------------------------------------------------------------- files: pictures, --out, step summary


@pytest.mark.parametrize("pictures", ["../x.pt", "/etc/passwd", "sub/../../x.pt", "."])
def test_pictures_outside_the_report_folder_are_refused(capsys, tmp_path, pictures):
    outside = tmp_path / "x.pt"
    torch.save({"model/first_layer": torch.zeros(2, 1, 3, 3)}, outside)
    report = _report()
    report.pictures = pictures
    path = _write(tmp_path, report)
    code, _, err = run_cli(capsys, "report", "html", path)
    assert_usage_error(code, err, "key 'pictures'", repr(pictures), "allowed: a file inside the report's folder")
    assert not (tmp_path / "rep" / "report.html").exists()


def test_pictures_inside_the_folder_are_drawn_and_a_file_of_other_objects_is_refused(capsys, tmp_path):
    report = _report()
    report.pictures = PICTURES
    path = _write(tmp_path, report)
    torch.save({"model/first_layer": torch.randn(4, 1, 3, 3)}, tmp_path / "rep" / PICTURES)
    assert run_cli(capsys, "report", "html", path)[0] == 0
    page = (tmp_path / "rep" / "report.html").read_text()
    assert page.count("<img ") == 1 and 'alt="first-layer weights"' in page
    torch.save({"model/first_layer": [1, 2]}, tmp_path / "rep" / PICTURES)
    code, _, err = run_cli(capsys, "report", "html", path)
    assert_usage_error(code, err, PICTURES, "not a dict of named tensors")


def test_report_html_into_a_folder_exits_2(capsys, tmp_path):
    path = _write(tmp_path, _report())
    code, _, err = run_cli(capsys, "report", "html", path, "--out", tmp_path)
    assert_usage_error(code, err, str(tmp_path), "is a folder", "the path of the HTML file")


def _policy(tmp_path, threshold):
    policy = tmp_path / "audit.toml"
    policy.write_text(
        f'[[check]]\nkind = "attack"\nname = "{CHECK}"\neps = "8/255"\nmin_robust_accuracy = {threshold}\n'
    )
    return policy


@pytest.mark.parametrize("threshold,verdict_code", [(0.3, 0), (0.5, 1)])
def test_an_unwritable_step_summary_is_one_warning_and_the_verdict_keeps_its_exit_code(
    capsys, tmp_path, monkeypatch, threshold, verdict_code
):
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "no" / "such" / "folder" / "summary.md"))
    code, _, err = run_cli(capsys, "gate", _write(tmp_path, _report()), "--policy", _policy(tmp_path, threshold))
    assert code == verdict_code
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "GITHUB_STEP_SUMMARY" in warnings[0] and "cannot be written" in warnings[0]


def test_max_drop_without_a_baseline_exits_2(capsys, tmp_path):
    path = _write(tmp_path, _report())
    code, _, err = run_cli(capsys, "gate", path, "--policy", _policy(tmp_path, 0.3), "--max-drop", "0.05")
    assert_usage_error(code, err, "--max-drop 0.05", "needs --baseline")
    baseline = _write(tmp_path, _report(), "old.json")
    code, _, err = run_cli(
        capsys, "gate", path, "--policy", _policy(tmp_path, 0.3), "--baseline", baseline, "--max-drop", "0.05"
    )
    assert code == 0, err


def test_gate_output_folder_holds_the_verdict_files_only(capsys, tmp_path):
    code, _, _ = run_cli(
        capsys, "gate", _write(tmp_path, _report()), "--policy", _policy(tmp_path, 0.5), "--out", tmp_path / "g"
    )
    assert code == 1 and [p.name for p in files_under(tmp_path / "g")] == ["junit.xml", "verdict.md"]


# ---------------------------------------------------------------- what the tables show


def test_attack_tables_show_target_restarts_and_check_where_set(capsys, tmp_path):
    report = _report()
    plain = {**report.results["attack"]["rows"][0], "target": None, "restarts": 1, "check": "plain", "eps": 4 / 255}
    report.results["attack"]["rows"].append(plain)
    path = _write(tmp_path, report)
    code, out, _ = run_cli(capsys, "report", "show", path)
    assert code == 0
    titles = [line.rstrip() for line in out.splitlines() if line.startswith("Robust accuracy:")]
    assert titles == [
        "Robust accuracy: PGD linf, 10 steps, target random, 3 restarts (10 test images, model mlp)",
        "Robust accuracy: PGD linf, 10 steps (10 test images, model mlp)",
    ]
    markdown, page = to_markdown(report), to_html(report)
    for title in titles:
        assert f"## {title}" in markdown and f"<h3>{title}</h3>" in page
    assert "| check | eps |" in markdown and f"| {CHECK} | 8/255 |" in markdown and "| plain | 4/255 |" in markdown


def test_metrics_csv_keeps_every_label_of_a_row(tmp_path):
    from auditnn.report.writers import to_csv

    report = _report()
    report.metrics.append(
        metric_row(
            "attack",
            "robust_accuracy",
            0.3,
            method="pgd",
            norm="linf",
            eps=0.1,
            steps=10,
            check="t",
            target="random",
            restarts=3,
            step_size=0.01,
        )
    )
    header, first, second = to_csv(report).splitlines()
    assert header == "section,metric,check,method,norm,eps,steps,target,restarts,step_size,value"
    assert first.startswith("attack,robust_accuracy,robust enough,pgd,linf,") and first.endswith(",10,,,,0.4")
    assert second == "attack,robust_accuracy,t,pgd,linf,0.1,10,random,3,0.01,0.3"


@pytest.mark.parametrize(
    "text",
    ['{"seed": ' + "9" * 5000 + "}", "[" * 100_000 + "]" * 100_000],
    ids=["5000-digit integer", "nested 100000 deep"],
)
def test_json_python_cannot_hold_exits_2(capsys, tmp_path, text):
    (tmp_path / "report.json").write_text(text)
    code, _, err = run_cli(capsys, "report", "show", tmp_path / "report.json")
    assert_usage_error(code, err, str(tmp_path / "report.json"), "is not a JSON file auditnn reads")


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("attack/pgd/adversarial", torch.rand(3, 7), "has shape [3, 7]; allowed: 4 dimensions"),
        ("attack/pgd/adversarial", torch.rand(2, 5, 4, 4), "has 5 channels"),
        ("attack/pgd/clean", torch.full((1, 1, 4, 4), 2.0), "outside [0, 1]"),
        ("attack/pgd/clean", torch.full((1, 1, 4, 4), float("nan")), "NaN or infinite"),
        ("attack/pgd/labels", torch.tensor([-1, 2]), "not class indices"),
        ("attack/pgd/labels", torch.tensor([0.5]), "not class indices"),
        ("model/first_layer", torch.zeros(2, 2).to_sparse(), "not a dense real tensor"),
        ("model/first_layer", torch.zeros(2**12, 2**12 + 1), "more than 16777216"),
    ],
)
def test_a_pictures_file_with_tensors_the_page_cannot_draw_is_refused(capsys, tmp_path, key, value, needle):
    """Review of issue 10: a pictures.pt holding a (3, 7) 'adversarial' tensor crashed `report html` with exit 3."""
    report = _report()
    report.pictures = PICTURES
    path = _write(tmp_path, report)
    torch.save({key: value}, tmp_path / "rep" / PICTURES)
    code, _, err = run_cli(capsys, "report", "html", path)
    assert_usage_error(code, err, PICTURES, f"'{key}'", needle)
    assert not (tmp_path / "rep" / "report.html").exists()
