"""What outrider serves passes Prometheus's own checker, for every real engine page.

`promtool check metrics` exits 1 on a page it cannot parse and 3 on lint findings. The engines' own pages already
draw lint findings (vLLM and SGLang put ':' in names), so the bar is: the served page parses, and every finding is
either one the engine's page already had or the ':' rule on a unified name (the issue asks for `outrider:` names).
outrider's own metrics must draw none.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from outrider.engines import get_engine_spec
from outrider.metrics.concepts import profile_targets
from outrider.metrics.own import OwnMetrics
from outrider.metrics.standardize import Rewriter
from tests.conftest import fixtures_dir


def promtool(text: str) -> tuple[int, set[str]]:
    exe = shutil.which("promtool")
    assert exe, "promtool not found: install Debian's `prometheus` package (noxfile does this)"
    done = subprocess.run([exe, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    findings = {ln.strip() for ln in (done.stdout + done.stderr).decode().splitlines() if ln.strip()}
    return done.returncode, findings


@pytest.mark.parametrize("page_name", sorted(p.name for p in fixtures_dir().glob("*.prom")))
def test_served_page_passes_promtool(page_name: str) -> None:
    page = (fixtures_dir() / page_name).read_text()
    engine = page_name.split("-", 1)[0]
    rewriter = Rewriter(
        get_engine_spec(engine).metric_sources, profile_targets(("outrider", "kthena", "aibrix"), "outrider")
    )
    served = rewriter.rewrite(page) + OwnMetrics(engine).render().decode()

    engine_rc, engine_findings = promtool(page)
    rc, findings = promtool(served)
    assert engine_rc in (0, 3)
    assert rc in (0, 3), findings
    colon_rule = {f"{name} metric names should not contain ':'" for name in rewriter.target_names}
    new = findings - engine_findings - colon_rule
    assert new == set(), f"promtool findings outrider introduced: {sorted(new)}"
    assert not any(f.startswith("outrider_") for f in findings)


def test_promtool_catches_a_broken_page() -> None:
    # The check above is only worth something if promtool rejects what it should.
    rc, _ = promtool('# TYPE x counter\nx{a="1" 1\n')
    assert rc == 1
    rc, findings = promtool("# TYPE x_total gauge\nx_total 1\n")
    assert rc == 3 and findings
