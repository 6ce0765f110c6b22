"""Print, as JSON, the controller container's environment in the osprov chart rendered with the
given values: ``python chart_env.py <chart dir> '<values JSON>'`` → ``{"NAME": "value" or
{"fieldRef": ...}}``. Run by tests/controller_binary.rs to boot the real binary as the chart
configures it."""

import json
import sys

import chartlib

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: chart_env.py <chart dir> '<values JSON>'")
    chartlib.CHART = chartlib.pathlib.Path(sys.argv[1])
    dep = chartlib.one(chartlib.render(json.loads(sys.argv[2])), "Deployment")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    print(json.dumps({"args": container["args"], "env": env}))
