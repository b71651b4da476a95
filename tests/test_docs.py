"""The project's own documentation under docs/: generated parts up to date, every metric and alert described,
every relative link resolving, and no pointer left to documents outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from pegp_stream import docs_config
from pegp_stream.config import PET_CONFIGS, DaemonConfig, EvalConfig, ReplayConfig
from pegp_stream.drift import DETECTOR_CONFIGS

ROOT = Path(__file__).resolve().parents[1]
OPERATIONS = ROOT / "docs" / "operations.md"
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


def test_configuration_reference_is_up_to_date():
    text = OPERATIONS.read_text(encoding="utf-8")
    assert docs_config.replace_block(text, docs_config.render()) == text, (
        "docs/operations.md is stale: run python -m pegp_stream.docs_config --write")


def test_check_command_reports_a_stale_reference(tmp_path, capsys):
    stale = tmp_path / "operations.md"
    stale.write_text(f"# x\n\n{docs_config.BEGIN}\nold\n{docs_config.END}\n", encoding="utf-8")
    assert docs_config.main(["--file", str(stale), "--check"]) == 1
    assert "--write" in capsys.readouterr().err
    assert docs_config.main(["--file", str(stale), "--write"]) == 0
    assert docs_config.main(["--file", str(stale), "--check"]) == 0
    text = stale.read_text(encoding="utf-8")
    assert text.startswith("# x\n\n") and "`kafka.topic`" in text and text.endswith(docs_config.END + "\n")


def _models(model, seen):
    if model in seen:
        return
    seen.add(model)
    for info in model.model_fields.values():
        nested = docs_config._nested(info)
        if nested is not None:
            for sub in docs_config.BY_KIND.get(nested, {nested: nested}).values():
                _models(sub, seen)


@pytest.mark.parametrize("model", [DaemonConfig, ReplayConfig, EvalConfig])
def test_every_config_field_has_a_description(model):
    seen: set = set()
    _models(model, seen)
    kinds = set(PET_CONFIGS.values()) | set(DETECTOR_CONFIGS.values())
    missing = [f"{m.__name__}.{name}" for m in seen for name, info in m.model_fields.items()
               if not info.description and not (name == "kind" and m in kinds)
               and docs_config._nested(info) is None]
    assert not missing, f"add a description= to these fields: {sorted(missing)}"


def test_every_metric_is_described():
    source = (ROOT / "pegp_stream" / "serving" / "metrics.py").read_text()
    declared = set(re.findall(r'"(pegp_[a-z_]+)"', source))
    text = OPERATIONS.read_text(encoding="utf-8")
    counters = set(re.findall(r'(?:_counter|Counter)\(\s*"(pegp_[a-z_]+)"', source))  # exposed with _total
    names = {f"{name}_total" if name in counters else f"{name}_info" if name == "pegp_build" else name
             for name in declared}
    assert len(declared) >= 18
    assert not [name for name in sorted(names) if f"`{name}`" not in text]


def test_every_alert_is_described():
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    alerts = [rule["alert"] for group in rules["groups"] for rule in group["rules"]]
    text = OPERATIONS.read_text(encoding="utf-8")
    assert alerts and not [alert for alert in alerts if f"`{alert}`" not in text]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    text = doc.read_text(encoding="utf-8")
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t]
    missing = [t for t in targets if t and not (doc.parent / t).exists()]
    assert not missing


def test_no_pointer_to_documents_outside_the_repository():
    """Readers of a clone have no ../shared: every reference must point into docs/."""
    outside = re.compile("|".join(["pegp" + "-method\\.md", "(?<!docs/)architecture\\.md", "\\bstyle\\.md",
                                   "shared/" + "docs"]))
    paths = subprocess.run(["git", "ls-files", "pegp_stream", "tests", "benchmarks", "README.md"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    hits = [f"{path}:{number}" for path in paths if path.endswith((".py", ".md"))
            for number, line in enumerate((ROOT / path).read_text(encoding="utf-8").splitlines(), 1)
            if outside.search(line)]
    assert not hits
