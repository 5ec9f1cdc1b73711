"""The groups check with mitigation = "dfr": the user's model's last layer retrained on a held-out, group-balanced
part of the annotated images, before/after on the rest, the new layer written as safetensors, the gate on the dfr
rows; and the bad inputs it refuses."""

import json

import pytest
import torch
import torch.nn as nn
from helpers import assert_usage_error, files_under, run_cli

from auditnn.checks.groups import GroupsSettings, holdout_split, layer_key, needed_images
from auditnn.errors import AuditError
from auditnn.models.load import PixelModel
from auditnn.plan import Check, Plan, Threshold
from auditnn.runner import run_plan, write_outcome
from auditnn.shortcut.annotated import Annotations
from auditnn.spec import DataSpec, ModelSpec
from auditnn.subject import SubjectSpec
from auditnn.tensorfile import read_tensors

BIRDS = ["landbird", "waterbird"]
PLACES = ["land", "water"]
# (label, place, images): place agrees with the label for most birds; the conflicting groups are small
CELLS = [(0, 0, 40), (0, 1, 12), (1, 1, 40), (1, 0, 12)]

FACTORY = """
import torch
import torch.nn as nn


def make():
    # Follows the place pixel (1) eight times more than the bird pixel (0): a model that learned the shortcut.
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].weight[1, 0], net[1].weight[1, 1] = 1.0, 8.0
        net[1].weight[0] = -net[1].weight[1]
        net[1].bias.copy_(torch.tensor([4.5, -4.5]))
    return net
"""


def birds(seed=0):
    """(images (N, 1, 4, 4), labels, places): pixel 0 lit by the bird with noise 0.1 (0.3 or 0.7), pixel 1 by the
    place almost without noise (0.2 or 0.8), pixels 2 and 3 noise, the rest 0."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([y for y, _, n in CELLS for _ in range(n)])
    places = torch.tensor([p for _, p, n in CELLS for _ in range(n)])
    n = len(labels)
    images = torch.zeros(n, 16)
    images[:, 0] = 0.3 + 0.4 * labels + 0.1 * torch.randn(n, generator=g)
    images[:, 1] = 0.2 + 0.6 * places + 0.02 * torch.randn(n, generator=g)
    images[:, 2:4] = 0.5 + 0.1 * torch.randn(n, 2, generator=g)
    return images.clamp(0, 1).view(n, 1, 4, 4), labels, places


@pytest.fixture
def project(tmp_path, monkeypatch):
    images, labels, places = birds()
    torch.save({"images": images, "labels": labels, "classes": BIRDS}, tmp_path / "birds.pt")
    rows = ["index,label,place"] + [f"{i},{int(labels[i])},{PLACES[int(places[i])]}" for i in range(len(labels))]
    (tmp_path / "meta.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "birds_factory.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)  # the factory module imports from the working folder
    return tmp_path


def test_the_holdout_split_counts_and_covers_every_image_once():
    labels = torch.tensor([0] * 4 + [1] * 5 + [0] * 4 + [1] * 7 + [1])
    codes = torch.tensor([0] * 4 + [1] * 5 + [1] * 4 + [0] * 7 + [-1])
    notes = Annotations("place", PLACES, codes, 20)
    split = holdout_split(labels, notes, BIRDS, 0.5, seed=0)
    assert split.names == ["landbird x land", "waterbird x land", "landbird x water", "waterbird x water"]
    # floor(0.5 n) of each group: 4 -> 2, 7 -> 3, 4 -> 2, 5 -> 2; the unannotated image is never retrained on
    assert torch.bincount(split.groups[split.retrain], minlength=4).tolist() == [2, 3, 2, 2]
    assert sorted(split.retrain.tolist() + split.scored.tolist()) == list(range(21))
    assert 20 in split.scored.tolist() and split.groups[20] == -1
    again = holdout_split(labels, notes, BIRDS, 0.5, seed=0)
    other = holdout_split(labels, notes, BIRDS, 0.5, seed=1)
    assert torch.equal(split.retrain, again.retrain) and not torch.equal(split.retrain, other.retrain)


def test_a_group_too_small_to_hold_out_and_score_is_named_with_its_counts():
    assert needed_images(0.5) == 4 and needed_images(0.8) == 3 and needed_images(0.1) == 20  # by hand
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    notes = Annotations("place", PLACES, torch.tensor([0, 0, 0, 0, 1, 1, 1]), 7)
    with pytest.raises(
        AuditError,
        match=r"group 'waterbird x water' has 3 annotated images; mitigation dfr sets 0.5 of each group aside to "
        r"retrain on \(1 here\) and scores the rest \(2\), and needs at least 2 to retrain on and 1 to score, "
        r"so 4 images per group",
    ):
        holdout_split(labels, notes, BIRDS, 0.5, seed=0)


def test_the_layer_key_is_the_users_own_name():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    assert layer_key(PixelModel(net, [0.0], [1.0]), "net.1") == "1"
    assert layer_key(net, "1") == "1"


def _plan(root, mitigation="dfr", named=False, holdout=0.5):
    spec = SubjectSpec(ModelSpec("factory:birds_factory:make"), data=DataSpec.parse(f"tensors:{root / 'birds.pt'}"))
    settings = GroupsSettings(
        groups=str(root / "meta.csv"),
        attribute="place",
        associate="water:waterbird,land:landbird",
        mitigation=mitigation,
        holdout=holdout,
    )
    thresholds = [Threshold("min_worst_group_accuracy", "worst_group_accuracy", "min", 0.8)]
    return Plan("audit", [Check("groups", "birds" if named else None, settings, thresholds)], spec, device="cpu")


def _group_accuracy(net, images, labels, places):
    with torch.no_grad():
        right = net(images).argmax(1) == labels
    return {
        f"{BIRDS[y]} x {PLACES[p]}": float(right[(labels == y) & (places == p)].float().mean()) for y, p, _ in CELLS
    }


def test_dfr_retrains_the_users_last_layer_and_reports_before_and_after_on_the_same_images(project):
    plan = _plan(project)
    outcome = run_plan(plan, run_id="r", environment={}, out_dir=project / "out")
    (project / "out").mkdir()
    written = write_outcome(outcome, project / "out")
    assert "last_layer.safetensors" in written
    section = outcome.report.results["groups"]
    mitigation = section["mitigation"]
    assert mitigation["retrained_on"] == 20 + 6 + 20 + 6 and mitigation["scored"] == 52  # floor(n / 2) per group
    assert section["n"] == 52 and mitigation["retraining"]["per_group"] == 6 and mitigation["layer"] == "1"

    # A second way: the scored images (those not set aside), the factory's own network and the written layer.
    images, labels, places = birds()
    notes = Annotations("place", PLACES, places, len(labels))
    scored = holdout_split(labels, notes, BIRDS, 0.5, seed=plan.seed).scored
    images, labels, places = images[scored], labels[scored], places[scored]
    import birds_factory

    before = _group_accuracy(birds_factory.make(), images, labels, places)
    tensors, metadata = read_tensors(project / "out" / "last_layer.safetensors")
    assert set(tensors) == {"1.weight", "1.bias"} and metadata["layer"] == "1" and metadata["method"] == "dfr"
    retrained = birds_factory.make()
    retrained.load_state_dict(tensors, strict=False)
    after = _group_accuracy(retrained, images, labels, places)

    rows = {(r["method"], r["group"]): r["value"] for r in outcome.report.metrics if r["metric"] == "group_accuracy"}
    assert rows == pytest.approx(
        {**{("erm", g): a for g, a in before.items()}, **{("dfr", g): a for g, a in after.items()}}
    )
    assert min(before.values()) == 0.0  # the shortcut model calls every conflicting bird by its place
    assert section["worst_group_accuracy"] == pytest.approx(min(after.values())) and min(after.values()) >= 0.8
    assert mitigation["before"]["worst_group_accuracy"] == 0.0
    worst = {r["method"]: r["value"] for r in outcome.report.metrics if r["metric"] == "worst_group_accuracy"}
    assert worst == pytest.approx({"erm": 0.0, "dfr": min(after.values())})
    assert outcome.verdict is not None and outcome.verdict.passed  # the threshold judged the dfr row


def test_an_audit_file_judges_the_dfr_rows_and_without_mitigation_the_models_own(capsys, project):
    audit = """[model]\nsource = "factory:birds_factory:make"\n[data]\nsource = "tensors:birds.pt"\n[run]\ndevice = "cpu"\n
[[check]]\nkind = "groups"\nname = "retrained"\ngroups = "meta.csv"\nattribute = "place"
associate = "water:waterbird,land:landbird"\nmitigation = "dfr"\nmin_worst_group_accuracy = 0.8\n
[[check]]\nkind = "groups"\nname = "as is"\ngroups = "meta.csv"\nattribute = "place"
associate = "water:waterbird,land:landbird"\nmin_worst_group_accuracy = 0.8\n"""
    (project / "audit.toml").write_text(audit)
    code, out, err = run_cli(capsys, "audit", "audit.toml", "--out", "gate")
    assert code == 1, err  # the model as it is fails; retrained it passes
    report = json.loads((project / "gate" / "report.json").read_text())
    verdict = {row["check"]: row["passed"] for row in report["results"]["verdict"]["rows"]}
    assert verdict == {"retrained": True, "as is": False}
    measured = {row["check"]: row["measured"] for row in report["results"]["verdict"]["rows"]}
    dfr_row = next(
        r
        for r in report["metrics"]
        if r["check"] == "retrained" and r["metric"] == "worst_group_accuracy" and r["method"] == "dfr"
    )
    assert measured["retrained"] == dfr_row["value"] and measured["as is"] == 0.0
    assert "before and after DFR" in out


@pytest.mark.parametrize(
    ("line", "needles"),
    [
        (
            'mitigation = "jtt"',
            ["--mitigate (audit file: mitigation) 'jtt' is not one for your own model", "allowed: dfr"],
        ),
        ('mitigation = "dfr"\nholdout = 1.0', ["holdout 1", "allowed: a share of each group between 0 and 1"]),
        (
            'mitigation = "dfr"\nholdout = 0.05',
            ["group 'waterbird x land' has 12 annotated images", "(0 here)", "40 images"],
        ),
    ],
    ids=["unknown-method", "holdout-out-of-range", "groups-too-small"],
)
def test_bad_mitigation_settings_exit_2_with_one_line_and_no_files(capsys, project, line, needles):
    audit = (
        """[model]\nsource = "factory:birds_factory:make"\n[data]\nsource = "tensors:birds.pt"\n[run]\ndevice = "cpu"\n
[[check]]\nkind = "groups"\nname = "retrained"\ngroups = "meta.csv"\nattribute = "place"\nmax_gap = 1\n"""
        + line
        + "\n"
    )
    (project / "audit.toml").write_text(audit)
    code, _, err = run_cli(capsys, "audit", "audit.toml", "--out", "bad")
    assert_usage_error(code, err, *needles)
    assert files_under(project / "bad") == []
