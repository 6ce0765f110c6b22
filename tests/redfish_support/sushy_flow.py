"""The reprovisioning flow osprov runs, done with Ironic's Redfish client `sushy`, for the
side-by-side benchmark in tests/redfish_bench.rs.

    python sushy_flow.py ENDPOINT CA_FILE USER PASSWORD IMAGE_URL WORKERS

Connects once (sushy's default: a session where the service offers one, else basic auth), then
1. discovery: reads the Systems collection and every system in it, as an inventory would;
2. for every system, on WORKERS threads: find the CD virtual media, eject what is inserted,
   insert the image, set a one-time boot override to Cd, reset (ForceRestart when on, On when
   off), then the cleanup osprov does after the installer reported: eject, clear the override.
Prints one JSON line with the phases' wall-clock seconds; the HTTP requests are counted from the
emulator's access log by the caller.
"""
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import sushy


def reprovision(system, image):
    media = next(m for m in system.virtual_media.get_members()
                 if sushy.VirtualMediaType.CD in m.media_types
                 or sushy.VirtualMediaType.DVD in m.media_types)
    if media.inserted:
        media.eject_media()
    media.insert_media(image, inserted=True, write_protected=True)
    system.set_system_boot_options(sushy.BootSource.CD,
                                   enabled=sushy.BootSourceOverrideEnabled.ONCE)
    on = system.power_state == sushy.PowerState.ON
    system.reset_system(sushy.ResetType.FORCE_RESTART if on else sushy.ResetType.ON)
    # The installer has reported: osprov's cleanup.
    media.eject_media()
    # sushy's set_system_boot_options refuses target None (not in the allowed values) and the
    # emulator refuses a PATCH without a target: the same one PATCH osprov sends, through sushy's
    # own connector.
    system._conn.patch(system.path, data={'Boot': {'BootSourceOverrideTarget': 'None',
                                                   'BootSourceOverrideEnabled': 'Disabled'}})


def main():
    endpoint, ca, user, password, image, workers = sys.argv[1:7]
    root = sushy.Sushy(endpoint + '/redfish/v1', username=user, password=password, verify=ca)
    t0 = time.monotonic()
    systems = root.get_system_collection().get_members()
    discovery = time.monotonic() - t0
    t1 = time.monotonic()
    with ThreadPoolExecutor(max_workers=int(workers)) as pool:
        list(pool.map(lambda s: reprovision(s, image), systems))
    print(json.dumps({'systems': len(systems), 'discovery_s': discovery,
                      'reprovision_s': time.monotonic() - t1}))


if __name__ == '__main__':
    main()
