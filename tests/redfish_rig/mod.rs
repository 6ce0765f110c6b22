//! The Redfish end-to-end rig: a namespace on one of the two API backends, a sushy-tools
//! emulator (`redfish_support`), an ISO server, BMC Secrets and a controller that can be
//! stopped and started again, with readers of what the emulator saw.
#![allow(dead_code)]
use crate::cluster::TestCluster;
use crate::harness::*;
use crate::redfish_support::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use osprov::adapter::simulator::SimRegistry;
use osprov::api::{
    ManagedHost, OSDispatcher, OSProvisioningRequest, Phase, PowerState, RedfishSpec,
};
use osprov::controller::settings::{MetricsAddr, Settings};
use std::net::SocketAddr;
use std::sync::Arc;

pub struct Rig {
    pub c: TestCluster,
    pub emu: Emulator,
    pub iso: IsoServer,
    pub callback: SocketAddr,
    pub ctl: Option<RunningController>,
    pub requests: Api<OSProvisioningRequest>,
    pub dispatchers: Api<OSDispatcher>,
    pub hosts: Api<ManagedHost>,
    pub secrets: Api<Secret>,
}

impl Rig {
    pub async fn start(c: TestCluster, systems: usize, password: &str) -> Rig {
        Rig::start_with(c, systems, password, Some(1800)).await
    }

    /// `session_timeout`: the emulator's SessionService and EventService, or `None` for plain
    /// sushy-tools (basic auth only, no events).
    pub async fn start_with(
        c: TestCluster,
        systems: usize,
        password: &str,
        session_timeout: Option<u64>,
    ) -> Rig {
        osprov::controller::settings::init_logging(
            &std::env::var("OSPROV_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            osprov::controller::settings::LogFormat::Text,
        );
        let emu = Emulator::start_with(systems, session_timeout, session_timeout.is_some()).await;
        let iso = IsoServer::start().await;
        let rig = Rig {
            requests: c.api(),
            dispatchers: c.api(),
            hosts: c.api(),
            secrets: c.api(),
            callback: SocketAddr::from(([127, 0, 0, 1], free_port())),
            c,
            emu,
            iso,
            ctl: None,
        };
        create_bmc_secrets(&rig.secrets, &rig.emu, password).await;
        rig
    }

    pub fn settings(&self) -> Settings {
        Settings {
            callback_addr: MetricsAddr(Some(self.callback)),
            ..fast_settings_in(&self.c.ns)
        }
    }

    pub fn start_controller(&mut self) {
        self.ctl = Some(RunningController::start(
            self.c.client.clone(),
            self.settings(),
            Arc::new(SimRegistry::default()),
        ));
    }

    pub async fn stop_controller(&mut self) {
        if let Some(c) = self.ctl.take() {
            c.stop().await;
        }
    }

    pub fn spec(&self, with_ca: bool) -> RedfishSpec {
        redfish_spec(&self.emu, &self.iso, with_ca)
    }

    pub async fn dispatcher(&self, spec: RedfishSpec) {
        create(&self.dispatchers, &redfish_dispatcher("bmc", spec)).await;
    }

    pub async fn wait_hosts(&self, n: usize) -> Vec<ManagedHost> {
        eventually(60, &format!("{n} ManagedHosts"), || async {
            let list = self.hosts.list(&Default::default()).await.ok()?;
            (list.items.len() == n && list.items.iter().all(|h| h.status.is_some()))
                .then_some(list.items)
        })
        .await
    }

    pub async fn ready_condition(
        &self,
    ) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        let d = self.dispatchers.get("bmc").await.ok()?;
        d.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")
    }

    /// The CD virtual media of system `i` as the emulator reports it.
    pub async fn media(&self, i: usize) -> serde_json::Value {
        self.emu
            .get(&format!(
                "/redfish/v1/Systems/{}/VirtualMedia/Cd",
                system_uuid(i)
            ))
            .await
    }

    pub async fn boot_target(&self, i: usize) -> String {
        let sys = self
            .emu
            .get(&format!("/redfish/v1/Systems/{}", system_uuid(i)))
            .await;
        sys["Boot"]["BootSourceOverrideTarget"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Wait until system `i` has the ISO inserted; return the callback URL the image carries.
    pub async fn wait_inserted(&self, i: usize) -> String {
        wait_inserted(&self.emu, &self.iso, i).await
    }

    pub fn resets(&self, i: usize) -> usize {
        self.emu
            .count("POST", &system_uuid(i), "/Actions/ComputerSystem.Reset")
    }

    pub fn inserts(&self, i: usize) -> usize {
        self.emu
            .count("POST", &system_uuid(i), "/Actions/VirtualMedia.InsertMedia")
    }

    /// The power state on a ManagedHost.
    pub async fn power(&self, name: &str) -> Option<PowerState> {
        self.hosts.get(name).await.ok()?.status?.power
    }

    /// Sessions opened (successful logins) so far.
    pub fn logins(&self) -> usize {
        self.emu
            .count("POST", "/redfish/v1/SessionService/Sessions", "")
    }

    /// Reprovision system `i` through a request named `name` and report success by callback.
    pub async fn reprovision(&self, name: &str, i: usize) {
        create(
            &self.requests,
            &request(name, &format!("node-{i}"), "ubuntu-24.04"),
        )
        .await;
        let callback = self.wait_inserted(i).await;
        wait_phase(&self.requests, name, Phase::Provisioning, 30).await;
        eventually(30, "reset", || async { (self.resets(i) > 0).then_some(()) }).await;
        assert_eq!(report(&callback, r#"{"status":"succeeded"}"#).await, 200);
        wait_phase(&self.requests, name, Phase::Succeeded, 60).await;
    }
}
