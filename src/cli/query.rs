//! The read-mostly subcommands: `osprov hosts`, `osprov os list`, `osprov discover` and
//! `osprov status`. A question nobody can answer yet ("which OS images?" before any discovery)
//! asks the dispatchers for a fresh discovery through the `osprov.io/discover` annotation and
//! waits for it, as the original OS Provisioner did for its Resource Provider.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Resource as _, ResourceExt};

use super::output::{self, cell, Format};
use super::{CliError, Target};
use crate::api::{
    DispatcherState, ManagedHost, OSDispatcher, OSProvisioningRequest, Phase, DISCOVER_ANNOTATION,
    DISPATCHER_LABEL,
};

/// `osprov hosts`.
pub async fn hosts(
    t: &Target,
    dispatcher: Option<&str>,
    os: Option<&str>,
    format: Format,
) -> Result<String, CliError> {
    let mut lp = ListParams::default();
    if let Some(d) = dispatcher {
        lp = lp.labels(&format!("{DISPATCHER_LABEL}={d}"));
    }
    let mut items = t.api::<ManagedHost>().list(&lp).await?.items;
    if let Some(os) = os {
        items.retain(|h| h.status.as_ref().and_then(|s| s.current_os.as_deref()) == Some(os));
    }
    items.sort_by_key(|h| (h.namespace(), h.name_any()));
    if matches!(format, Format::Json | Format::Yaml) {
        return output::list(format, &items);
    }
    let wide = format == Format::Wide;
    let mut headers = vec!["name", "dispatcher", "os", "power", "state", "request"];
    if wide {
        headers.extend(["available os", "last seen"]);
    }
    if t.all {
        headers.insert(0, "namespace");
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|h| {
            let st = h.status.clone().unwrap_or_default();
            let mut row = vec![
                h.name_any(),
                cell(h.labels().get(DISPATCHER_LABEL).map(String::as_str)),
                cell(st.current_os.as_deref()),
                cell(st.power.map(|p| p.as_str())),
                cell(st.provisioning.map(|p| p.as_str())),
                cell(st.active_request.as_deref()),
            ];
            if wide {
                row.push(cell(Some(&st.available_os.join(","))));
                row.push(output::age(st.last_seen.map(|t| t.0)));
            }
            if t.all {
                row.insert(0, h.namespace().unwrap_or_default());
            }
            row
        })
        .collect();
    Ok(output::table(&headers, &rows))
}

/// `osprov os list`: the OS images a host (or a dispatcher, or every dispatcher) can take.
/// When none is known, a discovery is asked for and awaited first.
pub async fn os_list(
    t: &Target,
    host: Option<&str>,
    dispatcher: Option<&str>,
    timeout: Duration,
    format: Format,
) -> Result<String, CliError> {
    let mut rows = catalogue(t, host, dispatcher).await?;
    if rows.is_empty() {
        let targets = match (host, dispatcher) {
            (Some(h), _) => vec![host_dispatcher(t, h).await?],
            (None, Some(d)) => vec![d.to_string()],
            (None, None) => t
                .namespaced::<OSDispatcher>()
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .map(|d| d.name_any())
                .collect(),
        };
        if targets.is_empty() {
            return Err(CliError::Refused(format!(
                "no OSDispatcher in namespace {}: nothing can report OS images",
                t.namespace
            )));
        }
        eprintln!(
            "no OS image known yet; asking {} for a discovery",
            targets.join(", ")
        );
        // Every dispatcher at once: the wait is one discovery, not one per dispatcher.
        futures::future::try_join_all(targets.iter().map(|d| discover(t, d, Some(timeout))))
            .await?;
        rows = catalogue(t, host, dispatcher).await?;
        if rows.is_empty() {
            return Err(CliError::Failed(
                "the dispatchers report no OS image after a fresh discovery".into(),
            ));
        }
    }
    if matches!(format, Format::Json | Format::Yaml) {
        let items: Vec<_> = rows
            .iter()
            .map(|(owner, os, current)| {
                serde_json::json!({"source": owner, "os": os, "current": current})
            })
            .collect();
        return output::document(format, &items);
    }
    let header = if host.is_some() { "host" } else { "dispatcher" };
    let table_rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(owner, os, current)| {
            vec![owner, os, if current { "*".into() } else { String::new() }]
        })
        .collect();
    Ok(output::table(&[header, "os", "current"], &table_rows))
}

/// (host or dispatcher, OS image, is it the host's current OS) rows.
async fn catalogue(
    t: &Target,
    host: Option<&str>,
    dispatcher: Option<&str>,
) -> Result<Vec<(String, String, bool)>, CliError> {
    if let Some(h) = host {
        let mh = t
            .namespaced::<ManagedHost>()
            .get_opt(h)
            .await?
            .ok_or_else(|| not_managed(h, &t.namespace))?;
        let st = mh.status.unwrap_or_default();
        return Ok(st
            .available_os
            .iter()
            .map(|os| {
                (
                    h.to_string(),
                    os.clone(),
                    st.current_os.as_ref() == Some(os),
                )
            })
            .collect());
    }
    let ds: Vec<OSDispatcher> = match dispatcher {
        Some(d) => vec![get_dispatcher(&t.namespaced(), d).await?],
        None => {
            t.api::<OSDispatcher>()
                .list(&ListParams::default())
                .await?
                .items
        }
    };
    Ok(ds
        .iter()
        .flat_map(|d| {
            let name = d.name_any();
            d.status
                .iter()
                .flat_map(|s| s.os_catalogue.clone())
                .map(move |os| (name.clone(), os, false))
        })
        .collect())
}

pub fn not_managed(host: &str, ns: &str) -> CliError {
    CliError::Refused(format!(
        "host {host} is not managed by any dispatcher in namespace {ns}: osprov never invents \
         hosts; add it in the management software"
    ))
}

async fn get_dispatcher(api: &Api<OSDispatcher>, name: &str) -> Result<OSDispatcher, CliError> {
    api.get_opt(name)
        .await?
        .ok_or_else(|| CliError::Refused(format!("no OSDispatcher named {name}")))
}

/// The dispatcher that reports `host`.
pub async fn host_dispatcher(t: &Target, host: &str) -> Result<String, CliError> {
    let mh = t
        .namespaced::<ManagedHost>()
        .get_opt(host)
        .await?
        .ok_or_else(|| not_managed(host, &t.namespace))?;
    mh.labels()
        .get(DISPATCHER_LABEL)
        .cloned()
        .ok_or_else(|| CliError::Failed(format!("ManagedHost {host} names no dispatcher")))
}

/// `osprov discover`: asks for a discovery now; with `wait`, returns once it has finished.
pub async fn discover(
    t: &Target,
    dispatcher: &str,
    wait: Option<Duration>,
) -> Result<String, CliError> {
    let api: Api<OSDispatcher> = t.namespaced();
    get_dispatcher(&api, dispatcher).await?;
    let value = Timestamp::now().to_string();
    let patch = serde_json::json!({"metadata": {"annotations": {DISCOVER_ANNOTATION: value}}});
    api.patch(dispatcher, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let Some(timeout) = wait else {
        return Ok(format!("discovery of {dispatcher} requested\n"));
    };
    let started = Instant::now();
    loop {
        let d = get_dispatcher(&api, dispatcher).await?;
        let st = d.status.unwrap_or_default();
        if st.last_discovery_request.as_deref() == Some(value.as_str()) {
            return Ok(format!(
                "discovery of {dispatcher} finished: {} hosts, {} OS images\n",
                st.host_count.unwrap_or(0),
                st.os_catalogue.len()
            ));
        }
        if let Some(state @ (DispatcherState::Unreachable | DispatcherState::Degraded)) = st.state {
            let why = st
                .conditions
                .iter()
                .find(|c| c.type_ == crate::api::conditions::kind::READY);
            return Err(CliError::Failed(format!(
                "dispatcher {dispatcher} is {}: {}",
                state.as_str(),
                why.map(|c| c.message.as_str()).unwrap_or("no reason given")
            )));
        }
        if started.elapsed() > timeout {
            let state = st.state.map(|s| s.as_str()).unwrap_or("Unknown");
            return Err(CliError::Timeout(
                timeout,
                format!("discovery of {dispatcher} (dispatcher {state})"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `osprov status`: dispatchers, hosts, requests by phase, and what is stuck and why.
pub async fn status(t: &Target, format: Format) -> Result<String, CliError> {
    let dispatchers = t
        .api::<OSDispatcher>()
        .list(&ListParams::default())
        .await?
        .items;
    let requests = t
        .api::<OSProvisioningRequest>()
        .list(&ListParams::default())
        .await?
        .items;
    let mut by_phase: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &requests {
        let phase = r
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or(Phase::Pending);
        *by_phase.entry(phase.as_str()).or_default() += 1;
    }
    let stuck: Vec<&OSProvisioningRequest> = requests.iter().filter(|r| is_stuck(r)).collect();
    if matches!(format, Format::Json | Format::Yaml) {
        let doc = serde_json::json!({
            "dispatchers": dispatchers.iter().map(|d| {
                let st = d.status.clone().unwrap_or_default();
                serde_json::json!({
                    "namespace": d.namespace(), "name": d.name_any(),
                    "state": st.state.map(|s| s.as_str()), "hosts": st.host_count,
                    "osImages": st.os_catalogue.len(),
                })
            }).collect::<Vec<_>>(),
            "requestsByPhase": by_phase,
            "stuck": stuck.iter().map(|r| {
                let st = r.status.clone().unwrap_or_default();
                serde_json::json!({
                    "namespace": r.namespace(), "name": r.name_any(), "host": r.spec.host,
                    "phase": st.phase.map(Phase::as_str), "reason": st.reason,
                    "message": st.message,
                })
            }).collect::<Vec<_>>(),
        });
        return output::document(format, &doc);
    }
    let mut out = String::from("DISPATCHERS\n");
    let rows: Vec<Vec<String>> = dispatchers
        .iter()
        .map(|d| {
            let st = d.status.clone().unwrap_or_default();
            let ready = st
                .conditions
                .iter()
                .find(|c| c.type_ == crate::api::conditions::kind::READY);
            vec![
                d.name_any(),
                cell(st.state.map(|s| s.as_str())),
                st.host_count.unwrap_or(0).to_string(),
                st.os_catalogue.len().to_string(),
                output::age(st.last_discovery.map(|t| t.0)),
                cell(ready.map(|c| c.reason.as_str())),
            ]
        })
        .collect();
    out.push_str(&output::table(
        &[
            "name",
            "state",
            "hosts",
            "os images",
            "last discovery",
            "reason",
        ],
        &rows,
    ));
    out.push_str("\nREQUESTS\n");
    let rows: Vec<Vec<String>> = Phase::ALL
        .iter()
        .map(|p| {
            let n = by_phase.get(p.as_str()).copied().unwrap_or(0);
            vec![p.as_str().to_string(), n.to_string()]
        })
        .collect();
    out.push_str(&output::table(&["phase", "count"], &rows));
    if stuck.is_empty() {
        out.push_str("\nNothing is stuck.\n");
    } else {
        out.push_str("\nSTUCK\n");
        let rows: Vec<Vec<String>> = stuck
            .iter()
            .map(|r| {
                let st = r.status.clone().unwrap_or_default();
                vec![
                    r.name_any(),
                    r.spec.host.clone(),
                    cell(st.phase.map(Phase::as_str)),
                    cell(st.reason.as_deref()),
                    output::age(r.meta().creation_timestamp.as_ref().map(|t| t.0)),
                    cell(st.message.as_deref()),
                ]
            })
            .collect();
        out.push_str(&output::table(
            &["name", "host", "phase", "reason", "age", "message"],
            &rows,
        ));
    }
    Ok(out)
}

/// An open request that cannot move on by itself: its dispatcher is unavailable, or it waits
/// for a retry after a failure.
fn is_stuck(r: &OSProvisioningRequest) -> bool {
    let Some(st) = r.status.as_ref() else {
        return false;
    };
    let open = !st.phase.is_some_and(Phase::is_terminal);
    let reason = st.reason.as_deref().unwrap_or_default();
    open && matches!(
        reason,
        crate::api::conditions::reason::DISPATCHER_UNAVAILABLE
            | crate::api::conditions::reason::RETRY_SCHEDULED
            | crate::api::conditions::reason::WAITING_FOR_DISCOVERY
    )
}
