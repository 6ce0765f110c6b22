//! Controller harness for integration tests: runs the real controller (in-process on a tokio
//! runtime of its own, so stopping it ends all its tasks as a killed pod would; against the
//! embedded API over HTTP through a kube client) with test-friendly timings, and small helpers to
//! create dispatchers/requests and wait for conditions.
#![allow(dead_code)]
use kube::api::{Api, PostParams};
use osprov::adapter::simulator::SimRegistry;
use osprov::api::{
    OSDispatcher, OSDispatcherSpec, OSProvisioningRequest, OSProvisioningRequestSpec, Phase,
    SimulatorSpec,
};
use osprov::controller::adapters::AdapterFactory;
use osprov::controller::settings::Settings;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Settings that make tests fast: quick discovery, polling and retries; no metrics port.
pub fn fast_settings() -> Settings {
    Settings {
        lookup_interval: Duration::from_millis(500),
        poll_interval: Duration::from_millis(100),
        retry_base: Duration::from_millis(100),
        retry_cap: Duration::from_millis(400),
        host_grace: Duration::from_secs(2),
        metrics_addr: Default::default(),
        ..Settings::default()
    }
}

/// `fast_settings()` for a controller that watches only `ns` (a test's own namespace).
pub fn fast_settings_in(ns: &str) -> Settings {
    Settings {
        namespaces: vec![ns.to_string()],
        ..fast_settings()
    }
}

/// The controller's logs in test output, filtered by `OSPROV_TEST_LOG` (e.g. `osprov=debug`);
/// silent when it is unset.
pub fn init_test_logging() {
    if let Ok(filter) = std::env::var("OSPROV_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// A future run like a process of its own: on a thread with a tokio runtime of its own. Killing
/// it shuts that runtime down, so every task the future spawned ends with it (at its next await,
/// none waited for), as when a pod is killed; aborting a task would leave its spawned tasks
/// running in the test's runtime.
pub struct Isolated<T> {
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Option<T>>>,
}

impl<T: Send + 'static> Isolated<T> {
    pub fn spawn<F>(future: F) -> Self
    where
        F: Future<Output = T> + Send + 'static,
    {
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => panic!("a runtime of its own: {e}"),
            };
            let out = rt.block_on(async move {
                tokio::select! {
                    out = future => Some(out),
                    _ = killed => None,
                }
            });
            rt.shutdown_timeout(Duration::from_secs(10));
            out
        });
        Isolated {
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    /// Kill it; returns once none of its tasks runs.
    pub async fn kill(mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        let _ = self.join().await;
    }

    /// Wait until it ends: its output, or None when it was killed. Panics if it panicked.
    pub async fn join(&mut self) -> Option<T> {
        let thread = self.thread.take()?;
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(out)) => out,
            _ => panic!("an isolated run panicked"),
        }
    }

    /// True once it has ended.
    pub fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl<T> Drop for Isolated<T> {
    fn drop(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
    }
}

/// A running controller, [`Isolated`]: stopping or dropping it ends every task it started.
/// Its metrics are readable in-process (no port), so a test can wait for positive signs of
/// what it did (see [`RunningController::more_backend_calls`]).
pub struct RunningController {
    run: Isolated<()>,
    metrics: Arc<osprov::controller::metrics::Metrics>,
}

impl RunningController {
    pub fn start(client: kube::Client, settings: Settings, sims: Arc<SimRegistry>) -> Self {
        init_test_logging();
        let runtime = osprov::controller::Runtime {
            adapters: AdapterFactory::with_simulators(sims),
            ..Default::default()
        };
        let metrics = runtime.metrics.clone();
        let run = Isolated::spawn(async move {
            let run =
                osprov::controller::run_with(client, settings, runtime, futures::future::pending());
            if let Err(e) = run.await {
                panic!("controller failed: {e}");
            }
        });
        RunningController { run, metrics }
    }

    /// Stop abruptly, as a crash or a killed pod would; returns once no task of it runs.
    pub async fn stop(self) {
        self.run.kill().await;
    }

    /// The sum of the series of metric `name` (as exported, e.g. `osprov_backend_calls_total`)
    /// that carry every label in `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.metrics.render();
        text.lines()
            .filter_map(|line| {
                let (series, value) = line.strip_prefix(name)?.rsplit_once(' ')?;
                // Not another metric whose name starts with `name`.
                if !(series.is_empty() || series.starts_with('{')) {
                    return None;
                }
                labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
                    .then(|| value.parse::<f64>().ok())
                    .flatten()
            })
            .sum()
    }

    /// Calls this controller made to its backends through the adapter contract, over all its
    /// dispatchers, that carry `labels`: `call` (`subscribe`, `discover`, `reprovision`,
    /// `operation`, `cancel`) and `outcome` (`ok`, or an error reason such as `Unreachable` or
    /// `AuthenticationFailed`).
    pub fn backend_calls(&self, labels: &[(&str, &str)]) -> u64 {
        self.metric("osprov_backend_calls_total", labels) as u64
    }

    /// Wait until this controller has made `n` more calls carrying `labels` (see
    /// [`RunningController::backend_calls`]) than it had made when this was called: a positive
    /// sign that it has been at work since. With `("call", "operation")` and one request in
    /// flight, `n = 2` means a whole reconcile of that request ran since (its look at the
    /// operation, its decision and the action it took): a request's next look starts only after
    /// its previous reconcile ended.
    pub async fn more_backend_calls(&self, labels: &[(&str, &str)], n: u64, secs: u64) {
        let from = self.backend_calls(labels);
        let what = format!("{n} more backend calls {labels:?} (from {from})");
        eventually(secs, &what, || async {
            (self.backend_calls(labels) >= from + n).then_some(())
        })
        .await;
    }
}

/// `backend_calls` labels: looks at a recorded operation that the backend answered.
pub const OPERATION_OK: &[(&str, &str)] = &[("call", "operation"), ("outcome", "ok")];

pub fn sim_dispatcher(name: &str, sim: SimulatorSpec) -> OSDispatcher {
    OSDispatcher::new(
        name,
        OSDispatcherSpec {
            adapter: Default::default(),
            provisioner: "osp".into(),
            lookup_interval: None,
            max_concurrent: None,
            simulator: Some(sim),
            libvirt: None,
            vsphere: None,
            redfish: None,
        },
    )
}

pub fn sim(hosts: i32, millis: i64) -> SimulatorSpec {
    SimulatorSpec {
        hosts,
        provision_millis: millis,
        ..SimulatorSpec::default()
    }
}

pub fn request(name: &str, host: &str, os: &str) -> OSProvisioningRequest {
    OSProvisioningRequest::new(
        name,
        OSProvisioningRequestSpec {
            host: host.into(),
            os: os.into(),
            dispatcher: None,
            max_attempts: None,
            ..Default::default()
        },
    )
}

pub async fn create<K>(api: &Api<K>, obj: &K) -> K
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.create(&PostParams::default(), obj)
        .await
        .expect("create")
}

/// Poll `check` every 50 ms until it returns Some, or panic after `secs` seconds with `what`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until request `name` reaches `phase`; returns the request. On timeout the panic shows
/// the request's last status.
pub async fn wait_phase(
    api: &Api<OSProvisioningRequest>,
    name: &str,
    phase: Phase,
    secs: u64,
) -> OSProvisioningRequest {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let r = api.get(name).await.ok();
        if let Some(r) = &r {
            if r.status.as_ref().and_then(|s| s.phase) == Some(phase) {
                return r.clone();
            }
        }
        if tokio::time::Instant::now() > deadline {
            let status = r
                .and_then(|r| r.status)
                .map(|s| serde_json::to_string(&s).unwrap_or_default());
            panic!("timed out after {secs}s waiting for {name} to be {phase:?}; last status: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// POST `body` to `url` as an installer would; the HTTP status (0: no answer).
pub async fn post(url: &str, body: &str) -> u16 {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .post(url)
        .body(body.to_string())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Report an installer outcome the way the documented installer step does
/// (`curl --retry … --retry-all-errors`): POST until the endpoint answers something other than
/// "no answer", `429 too many` or `503 try again`, for at most 30 s; the last HTTP status.
pub async fn report(url: &str, body: &str) -> u16 {
    let mut status = 0;
    for _ in 0..60 {
        status = post(url, body).await;
        if !matches!(status, 0 | 429 | 503) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    status
}

/// [`request`] with one attempt, so a failure is final.
pub fn once(name: &str, host: &str, os: &str) -> OSProvisioningRequest {
    let mut r = request(name, host, os);
    r.spec.max_attempts = Some(1);
    r
}
