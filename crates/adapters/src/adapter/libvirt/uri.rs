//! Which libvirt connection URIs a dispatcher may name.
//!
//! A libvirt URI is more than an address: its transport and query parameters choose programs
//! that libvirt runs on the controller's machine (`ext` with `command=`, `netcat=` on the far
//! side of `ssh`) and can turn certificate checks off (`no_verify`). Whoever may write an
//! OSDispatcher must not get to run commands in the controller's pod, so only the drivers,
//! transports and parameters below pass; anything else is refused with the reason, before
//! libvirt sees the URI. The grammar is libvirt's (`driver[+transport]://[user@][host][:port]/path[?params]`,
//! see libvirt's "Connection URIs" documentation); parsed by hand because it is that small.

/// Drivers osprov manages hosts of.
const DRIVERS: [&str; 3] = ["qemu", "xen", "test"];
/// Transports that open a connection and run nothing chosen by the URI.
const TRANSPORTS: [&str; 6] = ["", "unix", "tls", "ssh", "libssh", "libssh2"];
/// Parameters that only choose among built-in behaviours or name files the admin placed.
const PARAMS: [&str; 9] = [
    "socket",
    "mode",
    "name",
    "no_tty",
    "keyfile",
    "known_hosts",
    "known_hosts_verify",
    "sshauth",
    "pkipath",
];

/// `Ok` when `uri` may be handed to libvirt; otherwise why not.
pub fn check(uri: &str) -> Result<(), String> {
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| format!("libvirt URI {uri:?} has no scheme (e.g. qemu:///system)"))?;
    let (driver, transport) = scheme.split_once('+').unwrap_or((scheme, ""));
    if !DRIVERS.contains(&driver) {
        return Err(format!(
            "libvirt driver {driver:?} is not supported; use one of {}",
            DRIVERS.join(", ")
        ));
    }
    if !TRANSPORTS.contains(&transport) {
        return Err(format!(
            "libvirt transport {transport:?} is refused (it can run commands or skip checks \
             chosen by the URI); use one of unix, tls, ssh, libssh, libssh2"
        ));
    }
    let query = rest.split_once('?').map(|(_, q)| q).unwrap_or("");
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let name = pair.split_once('=').map(|(n, _)| n).unwrap_or(pair);
        let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
        if !PARAMS.contains(&name.as_ref()) {
            return Err(format!(
                "libvirt URI parameter {name:?} is refused; allowed: {}",
                PARAMS.join(", ")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn known_drivers_transports_and_parameters_pass() {
        for ok in [
            "qemu:///system",
            "qemu:///session",
            "xen:///system",
            "test:///tmp/node.xml",
            "qemu+ssh://ops@kvm-17.example.net/system?keyfile=/etc/osprov/id_ed25519&known_hosts=/etc/osprov/known_hosts",
            "qemu+tls://kvm-17.example.net/system?pkipath=/etc/pki/osprov",
            "qemu+unix:///system?socket=/run/libvirt/libvirt-sock",
            "qemu+libssh2://ops@h/system?sshauth=privkey&known_hosts_verify=normal",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn commands_unchecked_transports_and_unknown_parameters_are_refused() {
        for (bad, why) in [
            ("qemu+ext:///system?command=/bin/sh", "transport \"ext\""),
            ("qemu+ssh://h/system?netcat=/tmp/x", "\"netcat\""),
            ("qemu+ssh://h/system?command=id", "\"command\""),
            ("qemu+tls://h/system?no_verify=1", "\"no_verify\""),
            ("qemu+tls://h/system?%6Eo_verify=1", "\"no_verify\""),
            ("qemu+tcp://h/system", "transport \"tcp\""),
            ("lxc:///", "driver \"lxc\""),
            ("qemu", "no scheme"),
        ] {
            let e = check(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
