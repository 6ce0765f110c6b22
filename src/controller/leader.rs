//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several controller replicas
//! only one reconciles and a standby takes over once the leader's lease has expired.
//!
//! Why hand-written: kube-runtime 5.0 has no leader election. `kube-leader-election` still depends
//! on kube 4. `kube-lease-manager` 0.13 supports kube 5.0, but it takes over an expired or
//! orphaned lease with unconditional patches (strategic merge without a resourceVersion, and an
//! apply that relies on field-manager conflicts), so two standbys can both believe they won. It
//! also counts durations in whole seconds only, and it pulls in a second `rand` major version.
//! This module follows client-go's `leaderelection` instead, in about 300 lines:
//!
//! - the record is the Lease spec: `holderIdentity`, `leaseDurationSeconds`, `acquireTime`,
//!   `renewTime`, `leaseTransitions`;
//! - every write is a GET followed by a PUT carrying the read `resourceVersion` (optimistic
//!   concurrency): of two candidates racing for an expired lease, one gets 409 Conflict and stays
//!   a standby;
//! - expiry is judged on the *local* clock: a lease held by someone else counts as expired only
//!   when its record has not changed for `leaseDurationSeconds` since this process last saw it
//!   change, so clock skew between nodes does not matter;
//! - the leader renews every `retry_period` and gives up (stops reconciling) when no renewal
//!   succeeded for `renew_deadline`, which is shorter than the lease duration, so an old leader
//!   has stopped before a standby may take over;
//! - a leader that shuts down cleanly releases the lease (empty holder, duration 1 s) so a
//!   standby takes over at once instead of waiting for expiry.
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use rand::Rng;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::settings::parse_duration;

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("Kubernetes API error on the lease: {0}")]
    Kube(#[from] kube::Error),
    #[error("invalid leader election settings: {0}")]
    Config(String),
    #[error("a lease operation timed out")]
    Timeout,
    #[error("someone else wrote the lease first (409 Conflict)")]
    Conflict,
    #[error("leadership lost: {0}")]
    Lost(String),
}

/// Leader election flags of `osprov controller` (`OSPROV_*` environment, Helm values).
#[derive(Clone, Debug, clap::Args)]
pub struct ElectionArgs {
    /// Elect a leader among replicas through a coordination.k8s.io Lease; only the leader
    /// reconciles.
    #[arg(long, env = "OSPROV_LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    /// Namespace of the Lease (default: the client's namespace, i.e. the pod's in a cluster).
    #[arg(long, env = "OSPROV_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// This replica's identity in the Lease (default: $POD_NAME, else hostname and a random
    /// suffix).
    #[arg(long, env = "OSPROV_LEADER_ELECTION_IDENTITY")]
    pub leader_election_identity: Option<String>,
    /// How long a lease stays valid after its last renewal (whole seconds).
    #[arg(long, env = "OSPROV_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// The leader stops reconciling when it could not renew for this long.
    #[arg(long, env = "OSPROV_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,
    /// How often candidates try to acquire and the leader renews.
    #[arg(long, env = "OSPROV_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,
}

impl ElectionArgs {
    /// The election configuration for provisioner `identifier`, or `None` when disabled.
    pub fn config(
        &self,
        identifier: &str,
        default_namespace: &str,
    ) -> Result<Option<LeaderConfig>, LeaderError> {
        if !self.leader_elect {
            return Ok(None);
        }
        let identity = match &self.leader_election_identity {
            Some(id) => id.clone(),
            None => default_identity(),
        };
        let config = LeaderConfig {
            lease_name: lease_name(identifier),
            namespace: self
                .leader_election_namespace
                .clone()
                .unwrap_or_else(|| default_namespace.to_string()),
            identity,
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
        };
        config.validate()?;
        Ok(Some(config))
    }
}

/// The Lease name of provisioner `identifier`: `osprov-<identifier>`, made a valid DNS name.
pub fn lease_name(identifier: &str) -> String {
    let cleaned: String = identifier
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("osprov-{}", cleaned.trim_matches(|c| c == '-' || c == '.'))
}

fn default_identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME") {
        if !pod.is_empty() {
            return pod;
        }
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "osprov".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}_{}", &suffix[..8])
}

/// Everything one candidate needs to take part in the election.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub lease_name: String,
    pub namespace: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// client-go's rules: lease duration > renew deadline > retry period, all positive.
    pub fn validate(&self) -> Result<(), LeaderError> {
        if self.identity.is_empty() {
            return Err(LeaderError::Config("the identity is empty".into()));
        }
        if self.lease_duration < Duration::from_secs(1) || self.lease_duration.subsec_nanos() != 0 {
            return Err(LeaderError::Config(
                "the lease duration must be a whole number of seconds, at least 1s".into(),
            ));
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(LeaderError::Config(
                "the renew deadline must be shorter than the lease duration".into(),
            ));
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return Err(LeaderError::Config(
                "the retry period must be positive and shorter than the renew deadline".into(),
            ));
        }
        Ok(())
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }
}

/// The last lease record seen and when (on the local clock) it was first seen.
struct Observed {
    spec: LeaseSpec,
    at: Instant,
}

/// One candidate in the election.
pub struct Elector {
    api: Api<Lease>,
    config: LeaderConfig,
    observed: Option<Observed>,
    /// When the last successful acquisition or renewal was sent.
    renewed_at: Option<Instant>,
}

/// What one attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the lease (acquired or renewed).
    Held,
    /// Someone else holds an unexpired lease, or won a race for it.
    HeldBy(String),
}

impl Elector {
    pub fn new(client: Client, config: LeaderConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
            renewed_at: None,
        }
    }

    pub fn config(&self) -> &LeaderConfig {
        &self.config
    }

    /// client-go's `tryAcquireOrRenew`: create the lease, renew ours, or take over an expired
    /// one, always conditionally on the resourceVersion read.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Attempt, LeaderError> {
        let now = MicroTime(Timestamp::now());
        let me = self.config.identity.clone();
        let Some(mut lease) = self.api.get_opt(&self.config.lease_name).await? else {
            let spec = LeaseSpec {
                holder_identity: Some(me.clone()),
                lease_duration_seconds: Some(self.config.lease_seconds()),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            };
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.lease_name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(created.spec.unwrap_or_default());
                    Ok(Attempt::Held)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Err(LeaderError::Conflict),
                Err(e) => Err(e.into()),
            };
        };
        let old = lease.spec.clone().unwrap_or_default();
        if self.observed.as_ref().is_none_or(|o| o.spec != old) {
            self.observe(old.clone());
        }
        let holder = old.holder_identity.clone().unwrap_or_default();
        if !holder.is_empty() && holder != me && !self.expired(&old) {
            return Ok(Attempt::HeldBy(holder));
        }
        let ours = holder == me;
        let spec = LeaseSpec {
            holder_identity: Some(me.clone()),
            lease_duration_seconds: Some(self.config.lease_seconds()),
            acquire_time: if ours {
                old.acquire_time.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(old.lease_transitions.unwrap_or(0) + if ours { 0 } else { 1 }),
            ..old
        };
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.config.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                if !ours {
                    info!(lease = %self.config.lease_name, previous = %holder, identity = %me, "acquired the lease");
                }
                self.observe(written.spec.unwrap_or_default());
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                debug!(lease = %self.config.lease_name, "lost a race for the lease");
                Err(LeaderError::Conflict)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn observe(&mut self, spec: LeaseSpec) {
        self.observed = Some(Observed {
            spec,
            at: Instant::now(),
        });
    }

    /// True when the record `spec` has been unchanged for its lease duration on our clock.
    fn expired(&self, spec: &LeaseSpec) -> bool {
        let seconds = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(self.config.lease_duration.as_secs());
        match &self.observed {
            Some(o) if &o.spec == spec => o.at + Duration::from_secs(seconds) <= Instant::now(),
            _ => false,
        }
    }

    /// One attempt bounded by `limit`.
    async fn attempt_within(&mut self, limit: Duration) -> Result<Attempt, LeaderError> {
        let sent = Instant::now();
        let result = match tokio::time::timeout(limit, self.try_acquire_or_renew()).await {
            Ok(r) => r,
            Err(_) => Err(LeaderError::Timeout),
        };
        if result.as_ref().is_ok_and(|a| *a == Attempt::Held) {
            self.renewed_at = Some(sent);
        }
        result
    }

    fn jittered(&self) -> Duration {
        // client-go's JitterFactor 1.2 on acquisition: wait between 1 and 2.2 retry periods.
        let base = self.config.retry_period;
        base + base.mul_f64(rand::rng().random_range(0.0..1.2))
    }

    /// Wait until this candidate holds the lease. `healthy` is told after every attempt whether
    /// the API answered (a standby that cannot reach the API is not a healthy standby).
    pub async fn acquire(&mut self, mut healthy: impl FnMut(bool)) {
        loop {
            let limit = self.config.renew_deadline;
            match self.attempt_within(limit).await {
                Ok(Attempt::Held) => {
                    healthy(true);
                    return;
                }
                Ok(Attempt::HeldBy(holder)) => {
                    healthy(true);
                    debug!(%holder, "standing by");
                }
                Err(LeaderError::Conflict) => {
                    healthy(true);
                    debug!("another candidate wrote the lease first");
                }
                Err(e) => {
                    healthy(false);
                    warn!(error = %e, "could not look at the lease");
                }
            }
            tokio::time::sleep(self.jittered()).await;
        }
    }

    /// Keep renewing the lease; returns (leadership lost) when someone else holds it or when no
    /// renewal succeeded within the renew deadline.
    pub async fn hold(&mut self) -> LeaderError {
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            let last = self.renewed_at.unwrap_or_else(Instant::now);
            let left =
                (last + self.config.renew_deadline).saturating_duration_since(Instant::now());
            if left.is_zero() {
                return LeaderError::Lost("no renewal within the renew deadline".into());
            }
            match self.attempt_within(left).await {
                Ok(Attempt::Held) => {}
                Ok(Attempt::HeldBy(holder)) => {
                    warn!(%holder, "the lease was taken over");
                    return LeaderError::Lost(format!("the lease is held by {holder:?}"));
                }
                Err(e) => warn!(error = %e, "renewing the lease failed"),
            }
            let last = self.renewed_at.unwrap_or(last);
            if last + self.config.renew_deadline <= Instant::now() {
                return LeaderError::Lost("no renewal within the renew deadline".into());
            }
        }
    }

    /// Give the lease up (clean shutdown): empty holder, duration 1 s, so a standby takes over
    /// at once. Does nothing when someone else holds it.
    pub async fn release(&mut self) -> Result<(), LeaderError> {
        let Some(mut lease) = self.api.get_opt(&self.config.lease_name).await? else {
            return Ok(());
        };
        let old = lease.spec.clone().unwrap_or_default();
        if old.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        let now = MicroTime(Timestamp::now());
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..old
        });
        self.api
            .replace(&self.config.lease_name, &PostParams::default(), &lease)
            .await?;
        info!(lease = %self.config.lease_name, "released the lease");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(lease: u64, renew: u64, retry: u64) -> LeaderConfig {
        LeaderConfig {
            lease_name: "osprov-osp".into(),
            namespace: "default".into(),
            identity: "a".into(),
            lease_duration: Duration::from_millis(lease),
            renew_deadline: Duration::from_millis(renew),
            retry_period: Duration::from_millis(retry),
        }
    }

    #[test]
    fn timings_follow_client_go_rules() {
        assert!(cfg(15_000, 10_000, 2_000).validate().is_ok());
        assert!(cfg(15_000, 15_000, 2_000).validate().is_err());
        assert!(cfg(15_000, 10_000, 10_000).validate().is_err());
        assert!(
            cfg(1_500, 1_000, 200).validate().is_err(),
            "fractional seconds"
        );
        assert!(cfg(15_000, 10_000, 0).validate().is_err());
    }

    #[test]
    fn flags_and_environment() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            e: ElectionArgs,
        }
        let off = Cli::parse_from(["x"]).e;
        assert!(off.config("osp", "ns").expect("valid").is_none());
        let on = Cli::parse_from(["x", "--leader-elect", "--leader-election-identity", "pod-1"]).e;
        let c = on.config("lab", "ns").expect("valid").expect("enabled");
        assert_eq!(
            (
                c.lease_name.as_str(),
                c.namespace.as_str(),
                c.identity.as_str()
            ),
            ("osprov-lab", "ns", "pod-1")
        );
        assert_eq!(c.lease_duration, Duration::from_secs(15));
        let bad = Cli::parse_from(["x", "--leader-elect", "--renew-deadline", "20s"]).e;
        assert!(bad.config("osp", "ns").is_err());
    }

    #[test]
    fn lease_names_are_dns_names() {
        assert_eq!(lease_name("osp"), "osprov-osp");
        assert_eq!(lease_name("Lab_West"), "osprov-lab-west");
    }
}
