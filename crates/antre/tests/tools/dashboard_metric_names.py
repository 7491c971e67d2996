"""Prints the metric names a Grafana dashboard's PromQL queries read.

Used to make tests/fixtures/rabbitmq-overview-dashboard-metrics.txt from
RabbitMQ's deps/rabbitmq_prometheus/docker/grafana/dashboards/
RabbitMQ-Overview.json:

    python3 dashboard_metric_names.py RabbitMQ-Overview.json

Label matchers ({...}), grouping clauses (by, on, group_left, ...) and
function names are dropped; what remains of the rabbitmq_*/erlang_*
identifiers are series names.
"""

import json
import re
import sys


def queries(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item)


def names(expr):
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,[^)]*\)", r"\1", expr)
    for name in re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr):
        if name.startswith(("rabbitmq_", "erlang_")):
            yield name


dashboard = json.load(open(sys.argv[1]))
for name in sorted({n for q in queries(dashboard) for n in names(q)}):
    print(name)
