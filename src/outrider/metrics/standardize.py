"""Rewrite an engine's Prometheus text page: keep it byte for byte, append unified families after it.

The rewrite runs once per scrape (in the scraper, never per request). It is a single pass over the page's lines
with one dict look-up per sample line, so it stays well under a millisecond for the pages engines serve.

Why not prometheus_client's parser: it folds counter family names (`x_total` becomes `x`), which is how both peer
runtimes lost every renamed counter; it also rebuilds each sample, which costs far more than a name swap. Here a
sample line is matched by its exact metric name and re-emitted with only the name replaced, so labels, values,
exponents, NaN and timestamps are carried over exactly as the engine wrote them.

With the `gie` profile a `ProtocolRewrite` also runs (see `outrider.metrics.gie`): it may combine a protocol family
of several series into one where it stands on the page, and appends the protocol families the page lacks. The
unified families are always made from the page as the engine served it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

from outrider.metrics.concepts import CONCEPTS, MetricType
from outrider.metrics.gie import ProtocolRewrite

log = logging.getLogger(__name__)

_SUFFIXES: Mapping[MetricType, tuple[str, ...]] = {
    "counter": ("",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}


@dataclasses.dataclass(frozen=True)
class _Rule:
    concept: str
    type: MetricType
    sources: tuple[str, ...]  # newest spelling first
    targets: tuple[str, ...]
    help: str


@dataclasses.dataclass(frozen=True)
class RewrittenPage:
    text: str  # what /metrics serves of the engine
    max_lora: int | None = None  # the engine's adapters per batch, when its page tells (gie profile)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class Rewriter:
    """Compiled rename rules for one engine and one set of profiles."""

    def __init__(
        self,
        metric_sources: Mapping[str, tuple[str, ...]],
        targets: Mapping[str, tuple[str, ...]],
        protocol: ProtocolRewrite | None = None,
    ):
        self._protocol = protocol
        rules: list[_Rule] = []
        seen_targets: set[str] = set()
        for concept, names in targets.items():
            sources = metric_sources.get(concept)
            if not sources:
                continue  # this engine has no such quantity (e.g. gen_throughput on vLLM)
            kind = CONCEPTS[concept].type
            unique = tuple(n for n in names if n not in seen_targets)
            seen_targets.update(unique)
            if unique:
                help_text = f"{CONCEPTS[concept].help} Unified by outrider from: {', '.join(sources)}."
                rules.append(_Rule(concept, kind, sources, unique, _escape_help(help_text)))
        self._rules = tuple(rules)
        # sample name -> (source family, suffix); one engine family may feed several concepts
        # (SGLang's prompt tokens are also its prefix-cache queries), so the value is only the family.
        self._samples: dict[str, tuple[str, str]] = {}
        self._family_type: dict[str, MetricType] = {}
        for rule in self._rules:
            for source in rule.sources:
                self._family_type[source] = rule.type
                for suffix in _SUFFIXES[rule.type]:
                    self._samples[source + suffix] = (source, suffix)

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(t for rule in self._rules for t in rule.targets)

    def rewrite(self, page: str) -> str:
        """The page unchanged, followed by every unified family the page can feed (and, with a protocol, its
        families: see `rewrite_page`)."""
        return self.rewrite_page(page).text

    def rewrite_page(self, page: str) -> RewrittenPage:
        """The page with its protocol families made one series each (when a protocol is set), then the unified
        families, then the protocol families the page lacks."""
        unified = self._unified(page)
        if self._protocol is None:
            return RewrittenPage((page if page.endswith("\n") or not page else page + "\n") + unified)
        protocol = self._protocol.apply(page)
        return RewrittenPage(protocol.head + unified + protocol.tail, protocol.max_lora)

    def _unified(self, page: str) -> str:
        samples: dict[str, list[str]] = {}  # source family -> its sample lines with the family name cut off
        declared: dict[str, str] = {}  # family -> type on its TYPE line, for the families we map
        lookup = self._samples
        for line in page.splitlines():
            if not line:
                continue
            if line[0] == "#":
                if line.startswith("# TYPE "):
                    parts = line.split(" ", 3)
                    if len(parts) == 4 and parts[2] in self._family_type:
                        declared[parts[2]] = parts[3].strip()
                continue
            brace = line.find("{")
            space = line.find(" ")
            end = brace if brace != -1 and (space == -1 or brace < space) else space
            if end <= 0:
                continue
            hit = lookup.get(line[:end])
            if hit is not None:
                family, suffix = hit
                samples.setdefault(family, []).append(suffix + line[end:])

        out: list[str] = []
        for rule in self._rules:
            lines = None
            for source in rule.sources:
                kind = declared.get(source)
                if kind is not None and kind != rule.type:
                    # An engine that re-typed a family (say, a gauge where we expect a counter) must not
                    # make us publish a family whose TYPE lies about its samples.
                    continue
                lines = samples.get(source)
                if lines:
                    break
            if not lines:
                continue
            for target in rule.targets:
                out.append(f"# HELP {target} {rule.help}\n# TYPE {target} {rule.type}\n")
                out.append("".join(f"{target}{rest}\n" for rest in lines))
        return "".join(out)
