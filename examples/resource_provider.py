"""A Resource Provider in a few lines: ask osprov to put an OS on a host, with the host's own
cloud-init user-data, through the Kubernetes API with the official Python client, and wait for
the outcome.

    python examples/resource_provider.py --namespace default --host sim-000 --os ubuntu-24.04

It uses the current kubeconfig context (or $KUBECONFIG); it works the same against a real
cluster and against `osprov standalone`'s embedded API. Exit status: 0 when the request ends
Succeeded, 1 when it ends otherwise, 2 on a timeout.
"""
import argparse
import sys
import time

from kubernetes import client, config, watch

GROUP, VERSION, PLURAL = "osprov.io", "v1alpha1", "osprovisioningrequests"
FINAL = {"Succeeded", "Failed", "Rejected", "Cancelled"}


def user_data(hostname):
    return "#cloud-config\nhostname: %s\npackages: [htop]\n" % hostname


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--namespace", default="default")
    p.add_argument("--host", required=True)
    p.add_argument("--os", required=True)
    p.add_argument("--name", help="the request's name (default: <host>-<os>)")
    p.add_argument("--timeout", type=int, default=600, help="seconds to wait")
    a = p.parse_args()
    name = a.name or ("%s-%s" % (a.host, a.os)).replace(".", "-")

    config.load_kube_config()
    core = client.CoreV1Api()
    custom = client.CustomObjectsApi()

    # The host's configuration, in a Secret of the request's namespace. The client sends the
    # body as written here, without apiVersion and kind; the API server takes them from the URL.
    core.create_namespaced_secret(
        a.namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=name + "-config"),
            string_data={"userData": user_data(a.host)},
        ),
    )
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        a.namespace,
        PLURAL,
        {
            "apiVersion": "%s/%s" % (GROUP, VERSION),
            "kind": "OSProvisioningRequest",
            "metadata": {"name": name},
            "spec": {
                "host": a.host,
                "os": a.os,
                "hostname": a.host,
                "userData": {"name": name + "-config"},
            },
        },
    )
    print("created OSProvisioningRequest %s/%s" % (a.namespace, name), flush=True)

    deadline = time.monotonic() + a.timeout
    phase = None
    while time.monotonic() < deadline and phase not in FINAL:
        w = watch.Watch()
        left = max(1, int(deadline - time.monotonic()))
        for event in w.stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            a.namespace,
            PLURAL,
            field_selector="metadata.name=" + name,
            timeout_seconds=min(left, 30),
        ):
            status = event["object"].get("status") or {}
            if status.get("phase") != phase:
                phase = status.get("phase")
                print("phase %s: %s" % (phase, status.get("message", "")), flush=True)
            if phase in FINAL:
                w.stop()
                break
    if phase not in FINAL:
        print("no outcome within %ds" % a.timeout, file=sys.stderr)
        return 2
    return 0 if phase == "Succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
