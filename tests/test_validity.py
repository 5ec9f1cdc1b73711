"""The issue's validity checks on real training: fixed seeds, the built-in digits, a few seconds each."""

from types import SimpleNamespace

from auditnn.checks.shortcut import ShortcutSettings
from auditnn.plan import Check, Plan
from auditnn.runner import run_plan
from auditnn.spec import ModelSpec
from auditnn.subject import SubjectSpec
from auditnn.train import TrainConfig


def _audit(rho: float, tag: str = "watermark", epochs: int = 8, **kwargs) -> object:
    """The reliance metrics of a cnn trained on the digits with `tag` planted at `rho` (20 test images a class)."""
    subject = SubjectSpec(ModelSpec("cnn"), test_per_class=20, train=TrainConfig(epochs=epochs))
    plan = Plan(
        "shortcut", [Check("shortcut", None, ShortcutSettings(tag=tag, rho=[rho], **kwargs))], subject, device="cpu"
    )
    return SimpleNamespace(
        **run_plan(plan, run_id="r", environment={}).report.results["shortcut"]["rows"][0]["metrics"]
    )


def test_an_uninformative_shortcut_is_not_relied_on():
    m = _audit(rho=0.1)  # rho = 1/K: the shortcut carries no information about the label
    assert m.reliance <= 0.1 and abs(m.gap) <= 0.1
    assert m.follow_rate_normalized <= 0.1


def test_a_perfectly_predictive_salient_shortcut_takes_over():
    m = _audit(rho=1.0)
    assert m.reliance >= 0.8
    assert m.conflicting_accuracy < 0.2 < 0.95 < m.aligned_accuracy


def test_same_seed_same_numbers_on_cpu():
    a = _audit(rho=0.9, tag="boat", epochs=2)
    b = _audit(rho=0.9, tag="boat", epochs=2)
    assert vars(a) == vars(b)
