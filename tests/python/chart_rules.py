"""Print, as JSON, what the osprov chart grants its controller for the given values:
``python chart_rules.py <chart dir> '<values JSON>'`` → ``{"*": [[verb, group, resource]...],
"<namespace>": [...]}``. Run by tests/rbac.rs to compare the chart with the API requests the
controller really made."""

import json
import sys

import chartlib

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: chart_rules.py <chart dir> '<values JSON>'")
    chartlib.CHART = chartlib.pathlib.Path(sys.argv[1])
    print(json.dumps(chartlib.grants(chartlib.render(json.loads(sys.argv[2])))))
