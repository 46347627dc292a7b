//! The admin server on `metrics.listen`: `/metrics` (Prometheus), `/healthz`
//! (liveness) and `/readyz` (readiness), as linkerd2-proxy's admin port.
//! Also the process lifecycle the kubelet sees: readiness that latches once
//! every configured component is up, and a SIGTERM drain with a grace period.

use std::{
    fmt,
    net::SocketAddr,
    os::fd::AsFd,
    sync::{
        atomic::{AtomicBool, AtomicU8, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use aya::maps::{Map, MapData, MapError, PerCpuArray};
use axum::{extract::State, http::header, http::StatusCode, response::IntoResponse, routing::get, Router};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, family::Family, gauge::Gauge},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    ebpf::{
        stats::{read_counters, Counters},
        XdpGuard,
    },
    metrics::Metrics,
};

/// How long SIGTERM waits for in-flight proxy queries. Below CoreDNS's
/// `health { lameduck 5s }` plus Kubernetes's default 30 s grace period, so
/// the kubelet never has to SIGKILL us mid-answer.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr} (metrics.listen): {source}; pick a free port in guard.yaml")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the XDP object has no usable guard_stats map: {0}")]
    Stats(String),
}

// ---------------------------------------------------------------------------
// Readiness
// ---------------------------------------------------------------------------

/// A part of the process that must be up before the pod takes traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// The XDP program is attached and has a list table.
    Xdp = 1,
    /// The validating proxy is listening on `proxy.listen`.
    Proxy = 2,
}

/// Ready once every required component reported up; then it stays ready
/// (a latch), so a slow list reload never pulls CoreDNS out of its Service.
/// Only a drain (SIGTERM) makes it unready again.
#[derive(Debug, Default)]
pub struct Readiness {
    required: AtomicU8,
    up: AtomicU8,
    latched: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    /// Declare a component before starting any: readiness can latch as
    /// soon as everything declared so far is up.
    pub fn require(&self, c: Component) {
        self.required.fetch_or(c as u8, Ordering::SeqCst);
    }

    pub fn up(&self, c: Component) {
        self.up.fetch_or(c as u8, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        if self.draining.load(Ordering::SeqCst) {
            return false;
        }
        if self.latched.load(Ordering::SeqCst) {
            return true;
        }
        let required = self.required.load(Ordering::SeqCst);
        let ok = self.up.load(Ordering::SeqCst) & required == required;
        if ok {
            self.latched.store(true, Ordering::SeqCst);
        }
        ok
    }

    /// What is still missing, for the 503 body.
    pub fn waiting_for(&self) -> Vec<&'static str> {
        let missing = self.required.load(Ordering::SeqCst) & !self.up.load(Ordering::SeqCst);
        [(Component::Xdp, "xdp"), (Component::Proxy, "proxy")]
            .into_iter()
            .filter(|(c, _)| missing & *c as u8 != 0)
            .map(|(_, n)| n)
            .collect()
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------

/// What SIGTERM sets in motion. The proxy stops accepting when `token` is
/// cancelled and spawns each in-flight query on `tracker`, so `drain` can
/// wait for them (at most `DRAIN_GRACE`).
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    pub token: CancellationToken,
    pub tracker: TaskTracker,
}

impl Shutdown {
    /// Cancels the token, then waits up to `grace` for tracked tasks.
    /// Returns how many were still running when the grace period ran out.
    pub async fn drain(&self, readiness: &Readiness, grace: Duration) -> usize {
        readiness.start_draining();
        self.token.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_err() {
            let left = self.tracker.len();
            warn!(left, grace_s = grace.as_secs(), "drain grace period over; abandoning in-flight queries");
            return left;
        }
        0
    }
}

// ---------------------------------------------------------------------------
// XDP counters, read from the kernel at scrape time
// ---------------------------------------------------------------------------

/// An independent handle on the kernel's per-CPU `guard_stats` map (a dup
/// of its fd), so scrapes never contend with the reload path for the
/// `XdpGuard`.
#[derive(Debug)]
pub struct XdpStats {
    map: Map,
}

impl XdpStats {
    pub fn from_guard(guard: &XdpGuard) -> Result<Self, AdminError> {
        let bad = |e: &dyn fmt::Display| AdminError::Stats(e.to_string());
        let Some(Map::PerCpuArray(data)) = guard.ebpf.map("guard_stats") else {
            return Err(AdminError::Stats("missing or not a per-CPU array".into()));
        };
        let fd = data.fd().as_fd().try_clone_to_owned().map_err(|e| bad(&e))?;
        let map = Map::from_map_data(MapData::from_fd(fd).map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        Ok(Self { map })
    }

    pub fn read(&self) -> Result<Counters, MapError> {
        read_counters(&PerCpuArray::try_from(&self.map)?)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Encodes the XDP counters on each scrape. Empty until `set` is called
/// (no interface configured, or not attached yet).
#[derive(Debug, Default)]
pub struct XdpCollector {
    stats: OnceLock<XdpStats>,
}

impl XdpCollector {
    pub fn set(&self, stats: XdpStats) {
        let _ = self.stats.set(stats);
    }
}

impl Collector for XdpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(stats) = self.stats.get() else { return Ok(()) };
        let counters = match stats.read() {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "reading guard_stats for /metrics");
                return Ok(());
            }
        };
        // One series per reason, values straight from the kernel (summed over CPUs).
        let mut e = encoder.encode_descriptor(
            "xdp_packets",
            "Packets seen by the XDP program, by the reason of its verdict",
            None,
            ConstCounter::<u64>::new(0).metric_type(),
        )?;
        for (reason, value) in &counters.by_reason {
            ConstCounter::new(*value).encode(e.encode_family(&ReasonLabels { reason })?)?;
        }
        for (name, help, value) in [
            ("xdp_events_lost", "Verdict events the ring buffer had no room for", counters.events_lost),
            ("xdp_replies", "Replies the XDP program sent itself (XDP_TX)", counters.replies_tx),
        ] {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Everything the handlers read.
#[derive(Clone)]
pub struct Admin {
    pub metrics: Metrics,
    pub readiness: Arc<Readiness>,
    pub xdp: Arc<XdpCollector>,
}

impl Admin {
    /// Registers the build info and the XDP collector in `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        let xdp = Arc::new(XdpCollector::default());
        {
            let mut registry = metrics.registry.lock().unwrap_or_else(|p| p.into_inner());
            let build = Family::<BuildLabels, Gauge>::default();
            build.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
            registry.register("build_info", "Build of the running dns-guard; always 1", build);
            registry.register_collector(Box::new(xdp.clone()));
        }
        Self { metrics, readiness: Arc::new(Readiness::default()), xdp }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(self.clone())
    }

    /// Binds now (so a busy port fails startup, not a later probe) and
    /// serves until `stop` is cancelled. Returns the bound address.
    pub async fn serve(&self, addr: SocketAddr, stop: CancellationToken) -> Result<SocketAddr, AdminError> {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| AdminError::Bind { addr, source })?;
        let local = listener.local_addr().map_err(|source| AdminError::Bind { addr, source })?;
        let app = self.router();
        tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
            if let Err(e) = served {
                warn!(error = %e, "admin server stopped");
            }
        });
        info!(%local, "admin server listening (/metrics, /healthz, /readyz)");
        Ok(local)
    }
}

/// Prometheus's OpenMetrics text; prometheus-client writes the `# EOF`.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics(State(admin): State<Admin>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS)], admin.metrics.encode())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(admin): State<Admin>) -> (StatusCode, String) {
    if admin.readiness.is_ready() {
        (StatusCode::OK, "ready\n".into())
    } else if admin.readiness.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("waiting for: {}\n", admin.readiness.waiting_for().join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal HTTP/1.0 GET over a raw socket: the test needs no client crate.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        let status = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }

    #[tokio::test]
    async fn serves_health_readiness_and_metrics() {
        let admin = Admin::new(Metrics::new());
        admin.readiness.require(Component::Xdp);
        admin.readiness.require(Component::Proxy);
        let stop = CancellationToken::new();
        let addr = admin.serve("127.0.0.1:0".parse().unwrap(), stop.clone()).await.unwrap();

        assert_eq!(get(addr, "/healthz").await.0, 200);
        let (code, body) = get(addr, "/readyz").await;
        assert_eq!((code, body.as_str()), (503, "waiting for: xdp, proxy\n"));
        admin.readiness.up(Component::Xdp);
        assert_eq!(get(addr, "/readyz").await, (503, "waiting for: proxy\n".into()));
        admin.readiness.up(Component::Proxy);
        assert_eq!(get(addr, "/readyz").await.0, 200);

        let (code, text) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(text.contains(&format!("dns_guard_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))), "{text}");
        assert!(text.contains("# TYPE dns_guard_list_load_seconds histogram"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
        assert_eq!(get(addr, "/nope").await.0, 404);
        stop.cancel();
    }

    #[test]
    fn readiness_latches_and_only_a_drain_unlatches_it() {
        let r = Readiness::default();
        assert!(r.is_ready(), "nothing required: ready at once (proxy-less, XDP-less check runs)");
        let r = Readiness::default();
        r.require(Component::Xdp);
        assert!(!r.is_ready());
        r.up(Component::Xdp);
        assert!(r.is_ready());
        // A component declared after the latch does not flap readiness.
        r.require(Component::Proxy);
        assert!(r.is_ready());
        r.start_draining();
        assert!(!r.is_ready());
    }

    #[tokio::test]
    async fn drain_waits_for_tracked_tasks_within_the_grace_period() {
        let s = Shutdown::default();
        let r = Readiness::default();
        let token = s.token.clone();
        s.tracker.spawn(async move {
            token.cancelled().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
        s.tracker.spawn(tokio::time::sleep(Duration::from_secs(60)));
        let started = std::time::Instant::now();
        let left = s.drain(&r, Duration::from_millis(300)).await;
        assert_eq!(left, 1, "the 60 s task outlives the grace period");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!r.is_ready());
    }

    /// Needs root and bpffs (as the kernel fixtures do): the collector must
    /// read the very map the program counts into, through its own fd.
    #[test]
    fn xdp_counters_come_from_the_kernel_map_at_scrape_time() {
        use crate::ebpf::XdpSettings;
        use aya::maps::PerCpuValues;
        if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/sys/fs/bpf").exists() {
            assert!(std::env::var_os("CI").is_none(), "privileged test cannot run in CI: needs root and bpffs");
            // Straight to fd 2: the test harness captures eprintln!.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"\n*** SKIPPED: needs root and bpffs: xdp_counters_come_from_the_kernel_map_at_scrape_time ***\n",
            );
            return;
        }
        let pin_root = std::path::PathBuf::from(format!("/sys/fs/bpf/dg-admin-test-{}", std::process::id()));
        let settings = XdpSettings::unattached(pin_root.clone());
        let result = std::panic::catch_unwind(|| {
            let mut guard = XdpGuard::load_detached(&settings, &pin_root).expect("loading the XDP program");
            let admin = Admin::new(Metrics::new());
            admin.xdp.set(XdpStats::from_guard(&guard).expect("stats handle"));
            let text = admin.metrics.encode();
            assert!(text.contains(r#"dns_guard_xdp_packets_total{reason="blocklist_suffix"} 0"#), "{text}");

            let reason = crate::ebpf::abi::guard_reason::GUARD_REASON_BLOCK_SUFFIX as u32;
            let ncpus = aya::util::nr_cpus().expect("nr_cpus");
            let mut map: PerCpuArray<_, u64> =
                PerCpuArray::try_from(guard.ebpf.map_mut("guard_stats").unwrap()).unwrap();
            map.set(reason, PerCpuValues::try_from(vec![3u64; ncpus]).unwrap(), 0).unwrap();
            let text = admin.metrics.encode();
            let want = format!(r#"dns_guard_xdp_packets_total{{reason="blocklist_suffix"}} {}"#, 3 * ncpus);
            assert!(text.contains(&want), "{text}");
            assert!(text.contains("# TYPE dns_guard_xdp_replies counter"), "{text}");
            assert!(text.contains("dns_guard_xdp_events_lost_total 0"), "{text}");
        });
        let _ = std::fs::remove_dir_all(&pin_root);
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    }

    #[test]
    fn xdp_collector_is_silent_until_attached() {
        let admin = Admin::new(Metrics::new());
        assert!(!admin.metrics.encode().contains("xdp_packets"));
    }
}
