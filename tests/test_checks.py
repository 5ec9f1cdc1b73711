"""The check registry and the runner, generated from the registry: every kind is measured by the one runner, its rows
carry its check's name, the gate finds exactly one row per threshold, and a new kind without an example here fails."""

import csv
import dataclasses
import json

import pytest
import torch
from helpers import assert_usage_error, run_cli

from auditnn.checks import KINDS, Context
from auditnn.checks.base import CheckKind, register
from auditnn.cli import main
from auditnn.data.sources import load_source
from auditnn.errors import AuditError
from auditnn.gate import find_row
from auditnn.models import save_model_dir
from auditnn.plan import Check, Plan, Threshold, load_plan
from auditnn.runner import check_key, read_records, run_plan, validate_plan, write_outcome
from auditnn.spec import DataSpec, ModelSpec
from auditnn.subject import SubjectSpec, load_subject
from auditnn.train import TrainConfig, train_classifier

# Every registered kind's required settings, and small settings that keep it fast: a kind missing here fails below.
EXAMPLES = {
    "clean": {},
    "attack": {"eps": [8 / 255], "steps": 2},
    "shortcut": {"tag": "watermark", "rho": [0.9], "epochs": 1},
    "patch": {"steps": 3, "size": 0.25},
    "sensitivity": {"tag": "watermark"},
    "groups": {"groups": "GROUPS", "attribute": "side"},
    "discover": {"slices": 4},
    "scan": {"permutations": 100, "folds": 2},
    "discovery": {"tag": "watermark", "epochs": 1},
    "corruption": {
        "corruptions": ["defocus_blur,gaussian_blur"],
        "severities": ["1,2"],
        "corruption": "defocus_blur",
        "severity": 1,
        "baseline": "BASELINE",
    },
}


def test_every_registered_kind_has_an_example_and_every_example_a_kind():
    assert sorted(EXAMPLES) == sorted(KINDS)


def test_a_kind_registered_twice_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        register(type("Again", (CheckKind,), {"name": "clean"}))


@pytest.fixture(scope="module")
def subject_files(tmp_path_factory):
    """A trained mlp (auditnn:DIR), 60 digits as a tensors file, and a groups CSV naming each image's side."""
    root = tmp_path_factory.mktemp("subject")
    digits = load_source("digits").train
    pick = torch.randperm(len(digits.labels), generator=torch.Generator().manual_seed(0))[:60]
    images, labels = digits.images[pick], digits.labels[pick]
    torch.save({"images": images, "labels": labels}, root / "images.pt")
    model, _, card = train_classifier(
        digits.images, digits.labels, digits.classes, "mlp", TrainConfig(epochs=1), torch.device("cpu"), width=8
    )
    save_model_dir(model, card, root / "model")
    with open(root / "groups.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "side"])
        writer.writerows([i, int(y), "left" if i % 3 else "right"] for i, y in enumerate(labels.tolist()))
    code = main(
        [
            "corrupt",
            "--model",
            f"auditnn:{root / 'model'}",
            "--data",
            f"tensors:{root / 'images.pt'}",
            "--corruptions",
            "defocus_blur,gaussian_blur",
            "--severities",
            "1,2",
            "--device",
            "cpu",
            "-q",
            "--out",
            str(root / "base"),
        ]
    )
    assert code == 0
    return root


def _plan(root, kinds, named=True):
    spec = SubjectSpec(
        ModelSpec(f"auditnn:{root / 'model'}"),
        data=DataSpec.parse(f"tensors:{root / 'images.pt'}"),
        train=TrainConfig(epochs=1),
        width=8,
    )
    checks = []
    for kind in kinds:
        files = {"GROUPS": str(root / "groups.csv"), "BASELINE": str(root / "base" / "report.json")}
        values = {k: files.get(v, v) if isinstance(v, str) else v for k, v in EXAMPLES[kind].items()}
        thresholds = [Threshold(key, metric, bound, 0.5) for key, (metric, bound) in KINDS[kind].thresholds.items()]
        checks.append(Check(kind, f"my {kind}" if named else None, KINDS[kind].settings(**values), thresholds))
    return Plan("audit", checks, spec, device="cpu")


@pytest.fixture(scope="module")
def audited(subject_files):
    plan = _plan(subject_files, list(KINDS))
    return plan, run_plan(plan, run_id="r", environment={})


@pytest.mark.parametrize("kind", list(EXAMPLES))
def test_each_kind_rows_carry_its_name_and_the_gate_finds_one_row_per_threshold(audited, kind):
    plan, outcome = audited
    check = next(c for c in plan.checks if c.kind == kind)
    rows = [r for r in outcome.report.metrics if r.get("check") == check.name]
    assert rows and all(r["section"] == kind for r in rows)
    assert all("check" in r for r in outcome.report.metrics)
    for threshold in check.thresholds:
        row = find_row(outcome.report, check, threshold.metric)
        assert row is not None and row["check"] == check.name
    verdict_rows = [r for r in outcome.verdict.rows if r.check == check.name]
    assert len(verdict_rows) == len(check.thresholds)
    assert all(r.measured == find_row(outcome.report, check, r.metric)["value"] for r in verdict_rows)


def test_the_runner_clean_accuracy_is_a_plain_torch_count(audited):
    """Recomputed with the model the subject resolves to and one forward pass, counted by hand."""
    plan, outcome = audited
    subject = load_subject(plan.subject, torch.device("cpu"), seed=0)
    with torch.no_grad():
        predictions = subject.model(subject.data.test_images).argmax(1)
    correct = int((predictions == subject.data.test_labels).sum())
    assert 0 < correct < len(predictions)  # neither 0 nor 1: a wrong formula would show
    assert outcome.report.results["clean"]["accuracy"] == pytest.approx(correct / len(predictions), abs=1e-6)


@pytest.mark.parametrize("kind", list(EXAMPLES))
def test_a_default_name_changes_with_every_setting_an_audit_file_gives(kind):
    """Two checks that differ in one setting must get two names (the gate finds rows by name)."""
    settings_type, base = KINDS[kind].settings, dict(EXAMPLES[kind])
    name = KINDS[kind].default_name(settings_type(**base))
    other = {str: "other", int: 7, float: 0.123, bool: False}
    for key, written in KINDS[kind].file_keys().items():
        field = next(f for f in dataclasses.fields(settings_type) if f.name == key)
        value = (
            [0.123]
            if str(field.type).startswith("list")
            else other[{"a finite number": float, "an integer": int, "true or false": bool}.get(written, str)]
        )
        if value == base.get(key) or value == KINDS[kind].defaults().get(key):
            value = [0.456] if isinstance(value, list) else 9 if isinstance(value, int) else "else"
        changed = KINDS[kind].default_name(settings_type(**{**base, key: value}))
        if (kind, key) == ("groups", "groups"):  # the CSV's path is left out of the name: two such checks are refused
            assert changed == name
            continue
        assert changed != name, f"{kind}: setting '{key}' leaves the name '{name}'"


def test_two_groups_checks_that_differ_only_in_their_csv_must_be_named(tmp_path):
    check = "[[check]]\nkind = 'groups'\nattribute = 'side'\ngroups = '{}'\nmax_gap = 0.5\n"
    (tmp_path / "audit.toml").write_text(check.format("a.csv") + check.format("b.csv"))
    with pytest.raises(AuditError, match="two checks are named 'groups by side'; give each a distinct 'name'"):
        load_plan(tmp_path / "audit.toml")


def test_the_subject_fingerprint_follows_the_weights_and_the_data_not_where_they_are(subject_files, tmp_path):
    spec = _plan(subject_files, ["clean"]).subject
    cpu = torch.device("cpu")
    first = load_subject(spec, cpu, 0)
    assert load_subject(spec, cpu, 0).fingerprint == first.fingerprint
    save_model_dir(first.model, first.card, tmp_path / "model")  # the same model in another folder
    moved = dataclasses.replace(spec, model=ModelSpec(f"auditnn:{tmp_path / 'model'}"))
    assert load_subject(moved, cpu, 0).fingerprint == first.fingerprint
    with torch.no_grad():
        next(first.model.parameters()).add_(1e-3)  # other weights
    save_model_dir(first.model, first.card, tmp_path / "model")
    assert load_subject(moved, cpu, 0).fingerprint != first.fingerprint
    data = torch.load(subject_files / "images.pt")
    data["labels"] = (data["labels"] + 1) % 10
    torch.save(data, tmp_path / "relabelled.pt")
    relabelled = dataclasses.replace(spec, data=DataSpec.parse(f"tensors:{tmp_path / 'relabelled.pt'}"))
    assert load_subject(relabelled, cpu, 0).fingerprint != first.fingerprint


def test_records_round_trip_and_a_resumed_run_measures_only_new_checks(subject_files, tmp_path, monkeypatch):
    first = run_plan(_plan(subject_files, ["clean", "sensitivity"]), run_id="r", environment={})
    write_outcome(first, tmp_path)
    records = read_records(tmp_path)
    assert len(records) == 2
    measured = []
    for kind in KINDS.values():
        monkeypatch.setattr(
            kind, "measure", lambda s, ctx, real=kind.measure, k=kind.name: (measured.append(k), real(s, ctx))[1]
        )
    resumed = run_plan(
        _plan(subject_files, ["clean", "sensitivity", "groups"]), run_id="r", environment={}, reuse=records
    )
    assert measured == ["groups"] and resumed.reused == 2
    same = [r for r in resumed.report.metrics if r["section"] != "groups"]
    assert same == first.report.metrics


def test_a_record_key_changes_with_the_settings_and_a_damaged_record_is_measured_again(subject_files, tmp_path):
    plan = _plan(subject_files, ["sensitivity"])
    outcome = run_plan(plan, run_id="r", environment={})
    write_outcome(outcome, tmp_path)
    (key,) = outcome.records
    other = dataclasses.replace(plan.checks[0], settings=dataclasses.replace(plan.checks[0].settings, tag="boat"))
    cpu = torch.device("cpu")
    ctx = Context(load_subject(plan.subject, cpu, 0), plan.subject, cpu, 0)
    assert check_key(plan, plan.checks[0], ctx) == key and check_key(plan, other, ctx) != key
    (tmp_path / "checks" / f"{key}.json").write_text(json.dumps({"rows": "not a list"}))
    assert read_records(tmp_path) == {}


def test_resume_needs_the_folder_of_an_earlier_run(capsys, tmp_path):
    (tmp_path / "audit.toml").write_text("[[check]]\nkind = 'clean'\nmin_accuracy = 0.1\n")
    code, _, err = run_cli(capsys, "audit", str(tmp_path / "audit.toml"), "--resume")
    assert_usage_error(code, err, "--resume needs --out FOLDER")
    (tmp_path / "mine").mkdir()
    code, _, err = run_cli(capsys, "audit", str(tmp_path / "audit.toml"), "--resume", "--out", str(tmp_path / "mine"))
    assert_usage_error(code, err, f"--resume folder '{tmp_path / 'mine'}' is neither a complete auditnn output folder")


def test_an_audit_file_dataset_given_as_a_relative_source_spec_is_read_from_the_files_folder(subject_files, tmp_path):
    """Before the spec module, 'tensors:images.pt' became '<folder>/tensors:images.pt' (a path, not a spec)."""
    (tmp_path / "images.pt").write_bytes((subject_files / "images.pt").read_bytes())
    (tmp_path / "audit.toml").write_text(
        f"[model]\nsource = 'auditnn:{subject_files / 'model'}'\n"
        "[data]\ndataset = 'tensors:images.pt'\n[[check]]\nkind='clean'\nmin_accuracy=0.1\n"
    )
    assert load_plan(tmp_path / "audit.toml").subject.data.text == f"tensors:{tmp_path / 'images.pt'}"


def test_an_architecture_with_a_dataset_of_your_images_trains_on_a_split_of_them(capsys, subject_files, tmp_path):
    """Before the one runner, the audit measured an architecture on all of the images it trained on: exit 3."""
    (tmp_path / "audit.toml").write_text(
        f"[model]\nsource = 'mlp'\nwidth = 8\nepochs = 1\n[data]\ndataset = 'tensors:{subject_files / 'images.pt'}'\n"
        "test_per_class = 1\n[[check]]\nkind='clean'\nmin_accuracy=0.0\n"
    )
    code, _, err = run_cli(capsys, "audit", str(tmp_path / "audit.toml"), "-q", "--out", str(tmp_path / "out"))
    assert code == 0, err
    data = json.loads((tmp_path / "out" / "report.json").read_text())["results"]["clean"]["data"]
    assert data["n_test"] == 10 and data["n_train"] == 50


def test_a_command_check_has_no_name_and_its_rows_none(subject_files):
    outcome = run_plan(_plan(subject_files, ["clean"], named=False), run_id="r", environment={})
    assert outcome.records == {} and all("check" not in r for r in outcome.report.metrics)


def test_a_new_kind_is_one_class_and_the_audit_file_runner_tables_and_gate_follow(subject_files, tmp_path, monkeypatch):
    """What adding a kind takes: this class and its registration, nothing else (the issue's 'one module')."""
    from auditnn.checks.base import CheckResult as Result
    from auditnn.report.schema import metric_row
    from auditnn.report.tables import Table, fmt

    @dataclasses.dataclass
    class ConfidenceSettings:
        temperature: float = 1.0

    class Confidence(CheckKind):
        name = "confidence"
        settings = ConfidenceSettings
        thresholds = {"max_mean_confidence": ("mean_confidence", "max")}

        def title(self, settings):
            return "mean confidence", ()

        def measure(self, settings, ctx):
            with torch.no_grad():
                logits = ctx.subject.model(ctx.subject.data.test_images) / settings.temperature
            value = float(logits.softmax(1).amax(1).mean())
            return Result([metric_row("confidence", "mean_confidence", value)], {"mean_confidence": value})

        def tables(self, section):
            return [Table("Confidence", ["mean"], [[fmt(section["mean_confidence"])]])]

    monkeypatch.setitem(KINDS, "confidence", Confidence())
    (tmp_path / "audit.toml").write_text(
        f"[model]\nsource = 'auditnn:{subject_files / 'model'}'\n[data]\nsource = 'tensors:{subject_files / 'images.pt'}'\n"
        "[[check]]\nkind = 'confidence'\ntemperature = 2.0\nmax_mean_confidence = 0.99\n"
    )
    plan = load_plan(tmp_path / "audit.toml")
    assert plan.checks[0].name == "mean confidence temperature=2"
    outcome = run_plan(plan, run_id="r", environment={})
    subject = load_subject(plan.subject, torch.device("cpu"), 0)
    with torch.no_grad():
        probabilities = torch.softmax(subject.model(subject.data.test_images) / 2.0, dim=1)
    expected = float(probabilities.max(dim=1).values.mean())
    (row,) = outcome.report.metrics
    assert row == {
        "section": "confidence",
        "metric": "mean_confidence",
        "value": pytest.approx(expected),
        "check": "mean confidence temperature=2",
    }
    assert outcome.verdict.rows[0].measured == row["value"] and outcome.verdict.passed == (expected <= 0.99)
    from auditnn.report.tables import report_tables

    assert [t.title for t in report_tables(outcome.report)] == ["Confidence"]


# Review of issue 11: --resume must never reuse a result whose inputs changed, and bad records are measured again.


def _rows(outcome, section):
    return {(r["metric"], r.get("group")): r["value"] for r in outcome.report.metrics if r["section"] == section}


def test_resume_does_not_reuse_a_groups_result_after_its_csv_changed(subject_files, tmp_path):
    (tmp_path / "data").mkdir()
    csv_path = tmp_path / "groups.csv"
    csv_path.write_text((subject_files / "groups.csv").read_text())
    plan = _plan(subject_files, ["groups"])
    plan.checks[0].settings.groups = str(csv_path)
    first = run_plan(plan, run_id="r", environment={})
    write_outcome(first, tmp_path / "data")
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([lines[0], *(line.rsplit(",", 1)[0] + ",left" for line in lines[1:])]) + "\n")
    resumed = run_plan(plan, run_id="r", environment={}, reuse=read_records(tmp_path / "data"))
    assert resumed.reused == 0 and _rows(resumed, "groups") != _rows(first, "groups")


def test_resume_measures_a_shortcut_check_on_a_given_model_again(subject_files, tmp_path):
    """Its given model's weights or code may have changed behind the same spec; measuring it costs no training."""
    plan = _plan(subject_files, ["shortcut"])
    first = run_plan(plan, run_id="r", environment={})
    write_outcome(first, tmp_path)
    resumed = run_plan(plan, run_id="r", environment={}, reuse=read_records(tmp_path))
    assert resumed.reused == 0 and _rows(resumed, "shortcut") == _rows(first, "shortcut")


def test_resume_reuses_a_trained_shortcut_check_until_its_base_data_changes(tmp_path):
    images = load_source("digits").train
    torch.save({"images": images.images[:300], "labels": images.labels[:300]}, tmp_path / "base.pt")
    spec = SubjectSpec(
        ModelSpec("mlp"),
        base=DataSpec.source(f"tensors:{tmp_path / 'base.pt'}"),
        test_per_class=3,
        width=8,
        train=TrainConfig(epochs=1),
    )
    settings = KINDS["shortcut"].settings(tag="watermark", rho=[0.9])
    plan = Plan("audit", [Check("shortcut", "s", settings)], spec, device="cpu")
    write_outcome(run_plan(plan, run_id="r", environment={}), tmp_path / "out")
    assert run_plan(plan, run_id="r", environment={}, reuse=read_records(tmp_path / "out")).reused == 1
    torch.save({"images": 1 - images.images[:300], "labels": images.labels[:300]}, tmp_path / "base.pt")
    assert run_plan(plan, run_id="r", environment={}, reuse=read_records(tmp_path / "out")).reused == 0


def test_a_record_under_another_checks_key_is_not_reused(subject_files, tmp_path):
    plan = _plan(subject_files, ["clean", "sensitivity"])
    first = run_plan(plan, run_id="r", environment={})
    write_outcome(first, tmp_path)
    keys, folder = list(first.records), tmp_path / "checks"
    for suffix in (".json", ".pt"):  # swap the two records' files
        a, b = (folder / f"{keys[0]}{suffix}").read_bytes(), (folder / f"{keys[1]}{suffix}").read_bytes()
        (folder / f"{keys[0]}{suffix}").write_bytes(b)
        (folder / f"{keys[1]}{suffix}").write_bytes(a)
    assert read_records(tmp_path) == {}


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: r["section"].clear(),
        lambda r: r["rows"][0].update(value="x"),
        lambda r: r["warnings"].append({"x": 1}),
        lambda r: r.update(kind="fairness"),
    ],
)
def test_a_record_with_fields_of_the_wrong_shape_is_measured_again(subject_files, tmp_path, edit):
    plan = _plan(subject_files, ["attack"])
    first = run_plan(plan, run_id="r", environment={})
    write_outcome(first, tmp_path)
    (key,) = first.records
    path = tmp_path / "checks" / f"{key}.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))
    assert read_records(tmp_path) == {}


def _twin_subjects(subject_files, tmp_path, monkeypatch, module, source):
    """Two subjects of one factory module written from `source`: make() and make_twin(), the same weights
    (make()'s, saved), measured on the subject files' images."""
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    made = __import__(module).make()
    torch.save(made.state_dict(), tmp_path / "w.pt")
    spec = _plan(subject_files, ["clean"]).subject
    return [
        load_subject(
            dataclasses.replace(spec, model=ModelSpec(f"factory:{module}:{name}", str(tmp_path / "w.pt"))),
            torch.device("cpu"),
            0,
        )
        for name in ("make", "make_twin")
    ]


def test_the_fingerprint_follows_the_models_code_not_only_its_weights(subject_files, tmp_path, monkeypatch):
    plain, tanh = _twin_subjects(
        subject_files,
        tmp_path,
        monkeypatch,
        "twins",
        (
            "import torch.nn as nn\n"
            "def make(num_classes=10):\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Identity())\n"
            "def make_twin(num_classes=10):\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Tanh())\n"
        ),
    )
    assert plain.fingerprint != tanh.fingerprint


def test_a_shortcut_check_with_zero_epochs_is_refused(tmp_path):
    (tmp_path / "a.toml").write_text(
        "[model]\nsource='mlp'\n[[check]]\nkind='shortcut'\ntag='watermark'\nepochs=0\nmax_reliance=0.5\n"
    )
    with pytest.raises(AuditError, match="epochs 0; allowed: at least 1"):
        validate_plan(load_plan(tmp_path / "a.toml"))


@pytest.mark.parametrize(
    "text,needle",
    [
        ("[data]\ntest_per_class = -1\n", "test_per_class -1; allowed: at least 1"),
        ("[data]\ntest_per_class = 0\n", "test_per_class 0; allowed: at least 1"),
        ("[model]\nepochs = 0\n", "epochs 0; allowed: at least 1"),
    ],
)
def test_subject_settings_an_audit_file_gets_wrong_are_refused_before_anything_runs(tmp_path, text, needle):
    (tmp_path / "a.toml").write_text(text + "[[check]]\nkind='clean'\nmin_accuracy=0.5\n")
    with pytest.raises(AuditError, match=needle):
        validate_plan(load_plan(tmp_path / "a.toml"))


def test_an_empty_check_name_is_refused(tmp_path):
    (tmp_path / "a.toml").write_text("[[check]]\nkind='clean'\nname=''\nmin_accuracy=0.5\n")
    with pytest.raises(AuditError, match="key 'name' is ''; allowed: a name of at least one character"):
        load_plan(tmp_path / "a.toml")


def test_the_fingerprint_follows_a_model_whose_code_masks_its_gradient(subject_files, tmp_path, monkeypatch):
    """Second review of issue 11: the same answers on clean images with the gradient cut (x.detach() + 0 * x) kept
    the fingerprint, so --resume reused robust accuracy measured through the gradient."""
    plain, cut = _twin_subjects(
        subject_files,
        tmp_path,
        monkeypatch,
        "masked",
        (
            "import torch.nn as nn\n"
            "class Net(nn.Module):\n"
            "    def __init__(self, mask):\n        super().__init__()\n        self.fc, self.mask = nn.Linear(784, 10), mask\n"
            "    def forward(self, x):\n        x = x.flatten(1)\n"
            "        return self.fc(x.detach() + 0 * x if self.mask else x)\n"
            "def make(num_classes=10):\n    return Net(False)\n"
            "def make_twin(num_classes=10):\n    return Net(True)\n"
        ),
    )
    with torch.no_grad():
        assert torch.equal(plain.model(plain.data.test_images), cut.model(cut.data.test_images))
    assert plain.fingerprint != cut.fingerprint


def test_another_kinds_record_under_a_checks_key_is_measured_again(subject_files, tmp_path):
    """Second review of issue 11: the clean record copied over the attack's, its key field set to the attack's key,
    exited 3 (KeyError) on --resume."""
    plan = _plan(subject_files, ["clean", "attack"])
    first = run_plan(plan, run_id="r", environment={})
    write_outcome(first, tmp_path)
    clean_key, attack_key = (
        next(k for k, (kind, _) in first.records.items() if kind == name) for name in ("clean", "attack")
    )
    folder = tmp_path / "checks"
    record = json.loads((folder / f"{clean_key}.json").read_text())
    (folder / f"{attack_key}.json").write_text(json.dumps({**record, "key": attack_key}))
    (folder / f"{attack_key}.pt").write_bytes((folder / f"{clean_key}.pt").read_bytes())
    resumed = run_plan(plan, run_id="r", environment={}, reuse=read_records(tmp_path))
    timed = ("seconds", "images_per_second")
    measured_again = {k: v for k, v in _rows(resumed, "attack").items() if k[0] not in timed}
    assert resumed.reused == 1 and measured_again == {
        k: v for k, v in _rows(first, "attack").items() if k[0] not in timed
    }


def test_a_commands_run_never_computes_the_fingerprint(subject_files, monkeypatch):
    """Only records need it: hashing every image and a backward pass are no cost of a plain command."""

    def refuse(*args):
        raise AssertionError("fingerprint computed for a command")

    monkeypatch.setattr("auditnn.subject.answers_digest", refuse)
    outcome = run_plan(_plan(subject_files, ["clean", "sensitivity"], named=False), run_id="r", environment={})
    assert outcome.records == {} and outcome.report.metrics
