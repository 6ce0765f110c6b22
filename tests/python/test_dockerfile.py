"""Static checks of the Dockerfile (no container engine here to build it): multi-stage, the
final stage runs as the chart's non-root user, every file the build copies exists and is not
excluded by .dockerignore, and the image runs `osprov controller` as the chart expects."""

from __future__ import annotations

import fnmatch
import re

from chartlib import ROOT, render


def instructions():
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages():
    result: list[list[tuple[str, str]]] = []
    for word, rest in instructions():
        if word == "FROM":
            result.append([])
        if result:
            result[-1].append((word, rest))
    return result


def test_multi_stage_with_a_non_root_final_stage():
    st = stages()
    assert len(st) >= 2
    final = st[-1]
    users = [rest for word, rest in final if word == "USER"]
    deployment = next(d for d in render() if d["kind"] == "Deployment")
    run_as = deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert users and users[-1].split(":")[0] == str(run_as) != "0"
    # A slim base that carries what the binary links (libvirt0 for the libvirt adapter); the
    # USER line above is what keeps it non-root.
    base = final[0][1]
    assert base.startswith(("debian:", "gcr.io/distroless/"))
    installs = " ".join(rest for word, rest in final if word == "RUN")
    assert "libvirt0" in installs


def test_build_inputs_exist_and_are_not_ignored():
    ignored = [l.strip().rstrip("/") for l in (ROOT / ".dockerignore").read_text().splitlines()
               if l.strip() and not l.startswith("#")]
    build = stages()[0]
    sources = []
    for word, rest in build:
        if word == "COPY" and "--from" not in rest:
            sources.extend(rest.split()[:-1])
    assert "Cargo.lock" in sources and "src" in sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: missing"
        assert not any(fnmatch.fnmatch(src, pat) for pat in ignored), f"{src} is in .dockerignore"


def test_entrypoint_runs_the_controller():
    final = dict(stages()[-1])
    assert final["ENTRYPOINT"] == '["/usr/local/bin/osprov"]'
    deployment = next(d for d in render() if d["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"] == ["controller"]
    assert any("--bin osprov" in rest for word, rest in stages()[0] if word == "RUN")
