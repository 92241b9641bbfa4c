"""The PromQL name extractor that the dashboard and rule checks rely on: it must find every metric and nothing else."""

from __future__ import annotations

import pytest

from tests.promql_names import PromQLSyntaxError, grafana_query_names, metric_names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('outrider:num_requests_running{pod=~"$pod", model_name="a,b"}', {"outrider:num_requests_running"}),
        (
            "histogram_quantile(0.99, sum by (le, pod) (rate(outrider:time_to_first_token_seconds_bucket"
            '{namespace=~"$namespace"}[$__rate_interval])))',
            {"outrider:time_to_first_token_seconds_bucket"},
        ),
        (
            "sum(rate(a_total[5m])) by (job) / sum without (instance) (rate(b_total[5m:1m] offset 1h))",
            {"a_total", "b_total"},
        ),
        ("a / on(pod) group_left(model_name) b", {"a", "b"}),
        ("a > bool 0.5 and ignoring(reason) c unless d or e", {"a", "c", "d", "e"}),
        ('count_values("version", outrider_build_info)', {"outrider_build_info"}),
        ('label_replace(x, "dst", "$1", "src", "(.*)")', {"x"}),
        ('{__name__="outrider_engine_up", pod="p"}', {"outrider_engine_up"}),
        ("topk(5, max_over_time(m[1h] @ end()))", {"m"}),
        ("time() - process_start_time_seconds", {"process_start_time_seconds"}),
        ("x[[interval]] + ${var} * 1e-3 + 0x1f + Inf - NaN", {"x"}),
        ("# a comment naming not_a_metric\nreal_metric", {"real_metric"}),
        ("vector(1)", set()),
    ],
)
def test_finds_exactly_the_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@pytest.mark.parametrize("expr", ["sum(rate(a[5m])", 'a{b="c"', "a[5m", 'a{b="c}', "a)"])
def test_unbalanced_expressions_are_rejected(expr: str) -> None:
    with pytest.raises(PromQLSyntaxError):
        metric_names(expr)


def test_grafana_label_values_drops_the_label_argument() -> None:
    assert grafana_query_names('label_values(outrider_build_info{namespace=~"$namespace"}, pod)') == {
        "outrider_build_info"
    }
    assert grafana_query_names("label_values(namespace)") == set()
    assert grafana_query_names("sum(outrider_engine_up)") == {"outrider_engine_up"}
