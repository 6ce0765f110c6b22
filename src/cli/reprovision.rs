//! `osprov reprovision`: one host (`HOST OS`), or a fleet wave (`--selector LABELS OS`) that keeps
//! at most `--max-unavailable` hosts reprovisioning at once, stops at the first failure unless
//! `--continue-on-error`, and resumes where it stopped when run again, retrying the hosts whose
//! request failed (its requests carry a label derived from namespace, selector and OS, and names
//! derived from host and OS).
//!
//! The command only creates OSProvisioningRequests and reads them back: the controller does the
//! work, with all its safety rules. Progress is a bar or spinner (indicatif) in a terminal, and
//! plain lines, one per change, when the output is piped. Following is done by reading the
//! objects three times a second, a negligible load for an interactive command.
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::ResourceExt;

use super::query::{discover, not_managed};
use super::{CliError, Target};
use crate::api::{
    ManagedHost, OSProvisioningRequest, OSProvisioningRequestSpec, OSProvisioningRequestStatus,
    Phase, DISPATCHER_LABEL,
};
use crate::controller::world::is_terminal;
use crate::provisioner::inventory::object_name;

/// Label on the requests of one wave.
pub const WAVE_LABEL: &str = "osprov.io/wave";
const POLL: Duration = Duration::from_millis(300);

/// A request name for `host` → `os` (a DNS-1123 subdomain), ending in `suffix` when given: the
/// base is shortened so the suffix always survives.
pub fn request_name(host: &str, os: &str, suffix: Option<&str>) -> String {
    let base = object_name(&format!("{host}-{os}"));
    match suffix {
        None => base,
        Some(s) => {
            let keep = 253usize.saturating_sub(s.len() + 1);
            let short = object_name(&base.chars().take(keep).collect::<String>());
            format!("{short}-{s}")
        }
    }
}

/// The wave's id: a stable hash of namespace, selector and OS, so the same command finds its
/// requests again.
pub fn wave_id(namespace: &str, selector: &str, os: &str) -> String {
    let input = format!("{namespace}\0{selector}\0{os}");
    format!("w{}", crate::ident::short_hash(&input))
}

/// Some(true) once the request succeeded for its current generation, Some(false) once it ended
/// otherwise, None while it is open.
fn outcome(r: &OSProvisioningRequest) -> Option<bool> {
    let st = r.status.as_ref()?;
    is_terminal(st, r.metadata.generation.unwrap_or(1))
        .then_some(st.phase == Some(Phase::Succeeded))
}

/// The host's catalogue has `os`; asks for a discovery once before refusing.
async fn check_available(
    t: &Target,
    host: &str,
    os: &str,
    timeout: Duration,
) -> Result<(), CliError> {
    let api = t.namespaced::<ManagedHost>();
    let get = || async {
        api.get_opt(host)
            .await?
            .ok_or_else(|| not_managed(host, &t.namespace))
    };
    let mh = get().await?;
    let has = |mh: &ManagedHost| {
        mh.status
            .as_ref()
            .is_some_and(|s| s.available_os.iter().any(|o| o == os))
    };
    if has(&mh) {
        return Ok(());
    }
    if let Some(d) = mh.labels().get(DISPATCHER_LABEL) {
        discover(t, d, Some(timeout.min(Duration::from_secs(60)))).await?;
    }
    let mh = get().await?;
    if has(&mh) {
        return Ok(());
    }
    let known = mh
        .status
        .map(|s| s.available_os.join(", "))
        .unwrap_or_default();
    Err(CliError::Refused(format!(
        "OS {os} is not in the catalogue of host {host} (after a fresh discovery); it offers: {known}"
    )))
}

/// Creates `name` for host → os; an existing request with the same spec that is still open is
/// adopted (followed, not created again). A finished one is refused: it says nothing about
/// what the host runs now.
async fn ensure_request(
    t: &Target,
    name: &str,
    host: &str,
    os: &str,
    labels: BTreeMap<String, String>,
) -> Result<bool, CliError> {
    let api = t.namespaced::<OSProvisioningRequest>();
    if let Some(existing) = api.get_opt(name).await? {
        if existing.spec.host != host || existing.spec.os != os {
            return Err(CliError::Refused(format!(
                "request {name} already exists for {} → {}; choose another --name",
                existing.spec.host, existing.spec.os
            )));
        }
        if outcome(&existing).is_some() {
            let phase = existing.status.and_then(|s| s.phase).map(Phase::as_str);
            return Err(CliError::Refused(format!(
                "request {name} for {host} → {os} already ended ({}); delete it \
                 (kubectl delete ospr {name}) or choose another --name",
                phase.unwrap_or("finished")
            )));
        }
        return Ok(false);
    }
    let mut r = OSProvisioningRequest::new(
        name,
        OSProvisioningRequestSpec {
            host: host.into(),
            os: os.into(),
            dispatcher: None,
            max_attempts: None,
            ..Default::default()
        },
    );
    r.metadata.labels = Some(labels);
    api.create(&PostParams::default(), &r).await?;
    Ok(true)
}

/// Progress on a terminal (indicatif) or as plain lines.
struct Progress {
    bar: Option<ProgressBar>,
    last: String,
}

impl Progress {
    fn new(len: Option<u64>) -> Progress {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = match len {
                Some(n) => ProgressBar::new(n).with_style(
                    ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                ),
                None => ProgressBar::new_spinner(),
            };
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            bar,
            last: String::new(),
        }
    }

    fn update(&mut self, pos: u64, line: String, elapsed: Duration) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(pos);
                bar.set_message(line);
            }
            None if line != self.last => {
                println!("{:>5}s  {line}", elapsed.as_secs());
                self.last = line;
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn describe(st: Option<&OSProvisioningRequestStatus>) -> String {
    let Some(st) = st else {
        return "Pending (not picked up yet)".into();
    };
    format!(
        "{} {} attempt {}",
        st.phase.map(Phase::as_str).unwrap_or("Pending"),
        st.reason.as_deref().unwrap_or("-"),
        st.attempts.unwrap_or(0)
    )
}

/// `osprov reprovision HOST OS`.
pub async fn single(
    t: &Target,
    host: &str,
    os: &str,
    name: Option<&str>,
    wait: bool,
    timeout: Duration,
) -> Result<String, CliError> {
    check_available(t, host, os, timeout).await?;
    let name = name
        .map(str::to_string)
        .unwrap_or_else(|| request_name(host, os, None));
    let created = ensure_request(t, &name, host, os, BTreeMap::new()).await?;
    let verb = if created {
        "created"
    } else {
        "exists, following it"
    };
    if !wait {
        return Ok(format!("osprovisioningrequest.osprov.io/{name} {verb}\n"));
    }
    eprintln!("osprovisioningrequest.osprov.io/{name} {verb}");
    let api = t.namespaced::<OSProvisioningRequest>();
    let started = Instant::now();
    let mut progress = Progress::new(None);
    loop {
        let r = api.get(&name).await?;
        let st = r.status.as_ref();
        progress.update(0, describe(st), started.elapsed());
        match outcome(&r) {
            Some(true) => {
                progress.finish();
                return Ok(format!(
                    "{name}: Succeeded ({}) in {}s\n",
                    st.and_then(|s| s.reason.as_deref())
                        .unwrap_or("Provisioned"),
                    started.elapsed().as_secs()
                ));
            }
            Some(false) => {
                progress.finish();
                let st = st.cloned().unwrap_or_default();
                return Err(CliError::Failed(format!(
                    "{name}: {} ({}): {}",
                    st.phase.map(Phase::as_str).unwrap_or("Failed"),
                    st.reason.unwrap_or_default(),
                    st.message.unwrap_or_default()
                )));
            }
            None if started.elapsed() > timeout => {
                progress.finish();
                return Err(CliError::Timeout(
                    timeout,
                    format!("{name}: {}", describe(st)),
                ));
            }
            None => tokio::time::sleep(POLL).await,
        }
    }
}

/// The options of a wave.
pub struct Wave<'a> {
    pub selector: &'a str,
    pub os: &'a str,
    pub max_unavailable: usize,
    pub continue_on_error: bool,
    pub timeout: Duration,
}

/// `osprov reprovision --selector LABELS OS --max-unavailable N`.
pub async fn wave(t: &Target, w: &Wave<'_>) -> Result<String, CliError> {
    let mut hosts: Vec<String> = t
        .namespaced::<ManagedHost>()
        .list(&ListParams::default().labels(w.selector))
        .await?
        .items
        .iter()
        .map(|h| h.name_any())
        .collect();
    hosts.sort();
    if hosts.is_empty() {
        return Err(CliError::Refused(format!(
            "no ManagedHost in namespace {} matches {}",
            t.namespace, w.selector
        )));
    }
    for h in &hosts {
        check_available(t, h, w.os, w.timeout).await?;
    }
    let id = wave_id(&t.namespace, w.selector, w.os);
    let labels = BTreeMap::from([(WAVE_LABEL.to_string(), id.clone())]);
    let lp = ListParams::default().labels(&format!("{WAVE_LABEL}={id}"));
    retry_failed(t, &lp, &hosts, w.timeout).await?;
    eprintln!(
        "wave {id}: {} hosts, at most {} at a time",
        hosts.len(),
        w.max_unavailable
    );
    let api = t.namespaced::<OSProvisioningRequest>();
    let started = Instant::now();
    let mut progress = Progress::new(Some(hosts.len() as u64));
    loop {
        // This wave's requests for the hosts that match now (a host gone or relabelled since an
        // earlier run is no longer part of it).
        let mine: BTreeMap<String, Option<bool>> = api
            .list(&lp)
            .await?
            .items
            .iter()
            .filter(|r| hosts.binary_search(&r.spec.host).is_ok())
            .map(|r| (r.spec.host.clone(), outcome(r)))
            .collect();
        let succeeded = mine.values().filter(|d| **d == Some(true)).count();
        let failed: Vec<&str> = mine
            .iter()
            .filter(|(_, d)| **d == Some(false))
            .map(|(h, _)| h.as_str())
            .collect();
        let mut in_flight = mine.values().filter(|d| d.is_none()).count();
        let stopping = !failed.is_empty() && !w.continue_on_error;
        if !stopping {
            for h in hosts.iter().filter(|h| !mine.contains_key(*h)) {
                if in_flight >= w.max_unavailable {
                    break;
                }
                let name = request_name(h, w.os, Some(&id));
                ensure_request(t, &name, h, w.os, labels.clone()).await?;
                in_flight += 1;
            }
        }
        let finished = succeeded + failed.len();
        progress.update(
            finished as u64,
            format!(
                "{succeeded} succeeded, {in_flight} in flight, {} failed",
                failed.len()
            ),
            started.elapsed(),
        );
        if in_flight == 0 && (finished == hosts.len() || stopping) {
            progress.finish();
            if failed.is_empty() {
                return Ok(format!(
                    "wave {id}: {succeeded}/{} hosts run {} ({}s)\n",
                    hosts.len(),
                    w.os,
                    started.elapsed().as_secs()
                ));
            }
            return Err(CliError::Failed(format!(
                "wave {id}: {succeeded} succeeded, failed on {}{}",
                failed.join(", "),
                if stopping {
                    "; stopped at the first failure (run the same command again to retry the \
                     failed hosts and go on, or add --continue-on-error)"
                } else {
                    ""
                }
            )));
        }
        if started.elapsed() > w.timeout {
            progress.finish();
            return Err(CliError::Timeout(
                w.timeout,
                format!(
                    "wave {id}: {succeeded}/{} done, {in_flight} in flight",
                    hosts.len()
                ),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A wave run again retries the hosts whose request failed: the old request is deleted (its
/// host is released; nothing else happens to it) and the wave creates a new one in turn.
async fn retry_failed(
    t: &Target,
    lp: &ListParams,
    hosts: &[String],
    timeout: Duration,
) -> Result<(), CliError> {
    let api = t.namespaced::<OSProvisioningRequest>();
    let failed: Vec<OSProvisioningRequest> = api
        .list(lp)
        .await?
        .items
        .into_iter()
        .filter(|r| hosts.binary_search(&r.spec.host).is_ok() && outcome(r) == Some(false))
        .collect();
    for r in &failed {
        let st = r.status.clone().unwrap_or_default();
        eprintln!(
            "retrying {}: request {} ended {} ({})",
            r.spec.host,
            r.name_any(),
            st.phase.map(Phase::as_str).unwrap_or("Failed"),
            st.reason.unwrap_or_default()
        );
        api.delete(&r.name_any(), &DeleteParams::default()).await?;
    }
    let started = Instant::now();
    for r in &failed {
        while api.get_opt(&r.name_any()).await?.is_some() {
            if started.elapsed() > timeout {
                return Err(CliError::Timeout(
                    timeout,
                    format!("request {} to be deleted", r.name_any()),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_subdomains() {
        assert_eq!(
            request_name("sim-000", "debian-12", None),
            "sim-000-debian-12"
        );
        assert_eq!(
            request_name("Node_1", "Ubuntu 24.04", None),
            "node-1-ubuntu-24.04"
        );
        assert_eq!(request_name("-x", "y-", Some("w1")), "x-y-w1");
        assert_eq!(request_name("a", &"b".repeat(400), None).len(), 253);
        let long = request_name("a", &"b".repeat(400), Some("w12345678"));
        assert!(long.len() <= 253 && long.ends_with("-w12345678"), "{long}");
    }

    #[test]
    fn wave_ids_are_stable_and_distinct() {
        assert_eq!(
            wave_id("ns", "role=web", "debian-12"),
            wave_id("ns", "role=web", "debian-12")
        );
        assert_ne!(
            wave_id("ns", "role=web", "debian-12"),
            wave_id("ns", "role=db", "debian-12")
        );
        assert_eq!(wave_id("a", "b", "c").len(), 9);
    }
}
