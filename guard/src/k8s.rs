//! Optional Kubernetes enrichment: a watch on every pod keeps a map from pod
//! IP to namespace/name, so a verdict line can say which pod asked.
//!
//! It stays beside the datapath, never in it. The watch runs on a thread and
//! runtime of its own, so decoding a large pod list cannot delay the
//! proxy's workers; the verdict writer only reads the map and never waits on
//! the API server. When the API is down, lines simply carry no pod fields,
//! and the watcher retries with backoff: enforcement never notices.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::Path,
    sync::Arc,
    time::Duration,
};

use dashmap::DashMap;
use rustc_hash::FxBuildHasher;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api, Client,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{config::EnrichMode, metrics::Metrics};

/// Where the kubelet mounts a pod's service account token.
pub const TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Set by the kubelet in every container (with KUBERNETES_SERVICE_PORT).
pub const SERVICE_HOST_ENV: &str = "KUBERNETES_SERVICE_HOST";

#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error(
        "kubernetes.enrich is on, but there is neither an in-cluster service account nor a kubeconfig ({0}); \
         run in a pod with automountServiceAccountToken, set KUBECONFIG, or set kubernetes.enrich: auto"
    )]
    NoClusterConfig(#[source] kube::config::InferConfigError),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("cannot start the pod watch: {0}")]
    Thread(#[source] std::io::Error),
}

/// A pod, as a verdict line names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodRef {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

/// Pod IP → pod, shared by the watch (writer) and the verdict log (reader).
/// Cloning shares the map.
#[derive(Clone, Default)]
pub struct PodIndex {
    // Fx rather than SipHash: the stored keys are pod IPs the cluster
    // assigns, which a client cannot pick to make them collide.
    by_ip: Arc<DashMap<IpAddr, Arc<PodRef>, FxBuildHasher>>,
}

impl PodIndex {
    /// The pod that holds `ip` now, if the watch has seen it. A read of one
    /// shard of the map; a writer holds that shard only for one insert or
    /// remove, never across an API call.
    pub fn lookup(&self, ip: IpAddr) -> Option<Arc<PodRef>> {
        // A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d.
        self.by_ip.get(&ip.to_canonical()).map(|e| Arc::clone(e.value()))
    }

    /// IPs mapped (a dual-stack pod has two).
    pub fn ips(&self) -> usize {
        self.by_ip.len()
    }
}

/// The IPs a pod owns, or none when the IPs it shows are not its own: a
/// hostNetwork pod shows its node's, and a pod that has finished
/// (Succeeded or Failed) has handed its IP back for the next pod.
pub fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    if pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false) {
        return Vec::new();
    }
    let Some(status) = &pod.status else { return Vec::new() };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Vec::new();
    }
    // podIPs has one entry per family (dual stack); older API servers only
    // fill podIP, which is always podIPs[0].
    let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    let single = status.pod_ip.as_deref().filter(|_| status.pod_ips.is_none());
    let mut ips: Vec<IpAddr> = listed.chain(single).filter_map(|s| s.parse().ok()).collect();
    ips.dedup();
    ips
}

fn pod_ref(pod: &Pod) -> Option<PodRef> {
    Some(PodRef { namespace: pod.metadata.namespace.as_deref()?.into(), name: pod.metadata.name.as_deref()?.into() })
}

/// The watch's own view: which IPs each pod holds, so a delete or a changed
/// IP removes exactly that pod's entries and nobody else's.
pub struct PodCache {
    index: PodIndex,
    pods: HashMap<Arc<PodRef>, Vec<IpAddr>>,
    /// Pods listed since the watch (re)started, swapped in when the list is
    /// complete; until then lookups keep answering from the previous state.
    relist: Option<HashMap<Arc<PodRef>, Vec<IpAddr>>>,
}

impl PodCache {
    pub fn new(index: PodIndex) -> Self {
        PodCache { index, pods: HashMap::new(), relist: None }
    }

    /// Pods with at least one IP in the index.
    pub fn pods(&self) -> usize {
        self.pods.len()
    }

    pub fn handle(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Apply(pod) => {
                if let Some(r) = pod_ref(&pod) {
                    self.set(Arc::new(r), pod_ips(&pod));
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(r) = pod_ref(&pod) {
                    self.set(Arc::new(r), Vec::new());
                }
            }
            watcher::Event::Init => self.relist = Some(HashMap::new()),
            watcher::Event::InitApply(pod) => {
                if let Some(r) = pod_ref(&pod) {
                    self.relist.get_or_insert_default().insert(Arc::new(r), pod_ips(&pod));
                }
            }
            watcher::Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                // Deleted while the watch was down: the list no longer has them.
                let gone: Vec<Arc<PodRef>> = self.pods.keys().filter(|p| !listed.contains_key(*p)).cloned().collect();
                for pod in gone {
                    self.set(pod, Vec::new());
                }
                for (pod, ips) in listed {
                    self.set(pod, ips);
                }
            }
        }
    }

    /// Makes `ips` the IPs of `pod`; none removes it.
    fn set(&mut self, pod: Arc<PodRef>, ips: Vec<IpAddr>) {
        for old in self.pods.remove(&pod).unwrap_or_default() {
            if !ips.contains(&old) {
                // Only if still ours: the IP may already belong to a newer pod.
                self.index.by_ip.remove_if(&old, |_, owner| **owner == *pod);
            }
        }
        // IP reuse: the latest event wins, and a later delete of the older
        // pod leaves the entry alone (see above).
        for ip in &ips {
            self.index.by_ip.insert(*ip, Arc::clone(&pod));
        }
        if !ips.is_empty() {
            self.pods.insert(pod, ips);
        }
    }
}

/// True inside a pod: the kubelet set KUBERNETES_SERVICE_HOST and mounted a
/// service account token at `token`.
pub fn in_cluster(service_host: Option<&std::ffi::OsStr>, token: &Path) -> bool {
    service_host.is_some_and(|h| !h.is_empty()) && token.is_file()
}

/// The client config `kubernetes.enrich` asks for: `None` when enrichment
/// is off, or `auto` outside a cluster.
pub async fn cluster_config(mode: EnrichMode) -> Result<Option<kube::Config>, K8sError> {
    match mode {
        EnrichMode::Off => Ok(None),
        EnrichMode::Auto => {
            if !in_cluster(std::env::var_os(SERVICE_HOST_ENV).as_deref(), Path::new(TOKEN_PATH)) {
                return Ok(None);
            }
            match kube::Config::incluster() {
                Ok(c) => Ok(Some(c)),
                Err(e) => {
                    warn!(error = %e, "service account token present but the in-cluster config is incomplete; verdict lines will not name pods");
                    Ok(None)
                }
            }
        }
        // KUBECONFIG or ~/.kube/config first, then in-cluster, as kubectl.
        EnrichMode::On => kube::Config::infer().await.map(Some).map_err(K8sError::NoClusterConfig),
    }
}

/// The running pod watch; dropping it stops the watch.
pub struct PodWatch {
    stop: CancellationToken,
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl PodWatch {
    /// Starts watching every pod through `config`, filling `index`. Returns
    /// once the client is built; the list and watch run in the background.
    pub async fn start(mut config: kube::Config, index: PodIndex, metrics: Metrics) -> Result<PodWatch, K8sError> {
        // kube leaves the read timeout unset and guards only the watch
        // stream, so an API server that accepts the list call and never
        // answers would stall the cache for good. Longer than the 290 s
        // watch the server itself ends, so a quiet watch is never cut.
        config.read_timeout = Some(Duration::from_secs(300));
        config.reset_reader_on_write = true;
        let stop = CancellationToken::new();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let token = stop.clone();
        std::thread::Builder::new()
            .name("dns-guard-k8s".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(K8sError::Thread(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    // Built here: its connections belong to this runtime.
                    let client = match Client::try_from(config) {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready_tx.send(Err(K8sError::Client(e)));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    watch_pods(client, PodCache::new(index), metrics, token).await;
                });
            })
            .map_err(K8sError::Thread)?;
        match ready_rx.await {
            Ok(Ok(())) => Ok(PodWatch { stop }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(K8sError::Thread(std::io::Error::other("the pod watch thread exited while starting"))),
        }
    }
}

/// Lists, then watches, every pod until `stop`. kube's watcher resumes from
/// the last resourceVersion (bookmarks keep it fresh) and relists when that
/// has expired; errors come back here only to be counted and logged.
async fn watch_pods(client: Client, mut cache: PodCache, metrics: Metrics, stop: CancellationToken) {
    let api: Api<Pod> = Api::all(client);
    // Paged list (500 per page, as client-go): each page is decoded, reduced
    // to IPs and dropped, which keeps a large cluster within the sidecar's
    // memory limit.
    let events = watcher(api, watcher::Config::default()).default_backoff();
    let mut events = std::pin::pin!(events);
    let mut synced = false;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            next = events.next() => next,
        };
        match next {
            Some(Ok(event)) => {
                let done = matches!(event, watcher::Event::InitDone);
                cache.handle(event);
                metrics.k8s_pods.set(cache.pods() as i64);
                if done && !synced {
                    synced = true;
                    info!(pods = cache.pods(), "pod cache synced; verdict lines name client pods");
                }
            }
            Some(Err(e)) => {
                metrics.k8s_watch_errors.inc();
                warn!(error = %e, "pod watch failed; retrying with backoff (lines for pods it misses carry no pod fields)");
            }
            // The watcher's stream never ends on its own.
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodIP, PodSpec, PodStatus};

    fn pod(ns: &str, name: &str, phase: &str, ips: &[&str], host_network: bool) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = Some(ns.into());
        p.metadata.name = Some(name.into());
        p.spec = Some(PodSpec { host_network: host_network.then_some(true), ..Default::default() });
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            pod_ip: ips.first().map(|s| s.to_string()),
            pod_ips: (!ips.is_empty()).then(|| ips.iter().map(|s| PodIP { ip: s.to_string() }).collect()),
            ..Default::default()
        });
        p
    }

    fn at(index: &PodIndex, ip: &str) -> Option<String> {
        index.lookup(ip.parse().unwrap()).map(|p| format!("{}/{}", p.namespace, p.name))
    }

    #[test]
    fn pod_ips_skip_host_network_and_finished_pods() {
        let ips = |p: &Pod| pod_ips(p).iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(ips(&pod("a", "b", "Running", &["10.244.0.5", "fd00::5"], false)), ["10.244.0.5", "fd00::5"]);
        assert!(ips(&pod("a", "b", "Running", &["192.168.1.10"], true)).is_empty());
        assert!(ips(&pod("a", "b", "Succeeded", &["10.244.0.6"], false)).is_empty());
        assert!(ips(&pod("a", "b", "Failed", &["10.244.0.6"], false)).is_empty());
        assert!(ips(&pod("a", "b", "Pending", &[], false)).is_empty());
        // Only podIP, as servers before dual stack wrote it.
        let mut old = pod("a", "b", "Running", &["10.244.0.7"], false);
        old.status.as_mut().unwrap().pod_ips = None;
        assert_eq!(ips(&old), ["10.244.0.7"]);
    }

    #[test]
    fn ip_reuse_keeps_the_newest_owner() {
        let index = PodIndex::default();
        let mut cache = PodCache::new(index.clone());
        cache.handle(watcher::Event::Apply(pod("a", "old", "Running", &["10.244.0.5"], false)));
        cache.handle(watcher::Event::Apply(pod("b", "new", "Running", &["10.244.0.5"], false)));
        assert_eq!(at(&index, "10.244.0.5").as_deref(), Some("b/new"));
        // The old pod's late delete must not unmap the new owner.
        cache.handle(watcher::Event::Delete(pod("a", "old", "Running", &["10.244.0.5"], false)));
        assert_eq!(at(&index, "10.244.0.5").as_deref(), Some("b/new"));
        // A pod that finishes gives its IP up.
        cache.handle(watcher::Event::Apply(pod("b", "new", "Succeeded", &["10.244.0.5"], false)));
        assert_eq!(at(&index, "10.244.0.5"), None);
        assert_eq!((cache.pods(), index.ips()), (0, 0));
    }

    #[test]
    fn relist_replaces_the_set_without_a_gap() {
        let index = PodIndex::default();
        let mut cache = PodCache::new(index.clone());
        cache.handle(watcher::Event::Apply(pod("a", "gone", "Running", &["10.244.0.1"], false)));
        cache.handle(watcher::Event::Apply(pod("a", "kept", "Running", &["10.244.0.2"], false)));
        cache.handle(watcher::Event::Init);
        cache.handle(watcher::Event::InitApply(pod("a", "kept", "Running", &["10.244.0.3"], false)));
        // Mid-relist, lookups still answer from the last complete state.
        assert_eq!(at(&index, "10.244.0.1").as_deref(), Some("a/gone"));
        cache.handle(watcher::Event::InitDone);
        assert_eq!(at(&index, "10.244.0.1"), None);
        assert_eq!(at(&index, "10.244.0.2"), None);
        assert_eq!(at(&index, "10.244.0.3").as_deref(), Some("a/kept"));
        assert_eq!(cache.pods(), 1);
    }

    #[test]
    fn ipv4_mapped_clients_match_ipv4_pods() {
        let index = PodIndex::default();
        let mut cache = PodCache::new(index.clone());
        cache.handle(watcher::Event::Apply(pod("a", "b", "Running", &["10.244.0.9"], false)));
        assert_eq!(at(&index, "::ffff:10.244.0.9").as_deref(), Some("a/b"));
    }

    #[test]
    fn in_cluster_needs_both_the_env_and_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "eyJ").unwrap();
        let host = std::ffi::OsStr::new("10.96.0.1");
        assert!(in_cluster(Some(host), &token));
        assert!(!in_cluster(None, &token));
        assert!(!in_cluster(Some(std::ffi::OsStr::new("")), &token));
        assert!(!in_cluster(Some(host), &dir.path().join("missing")));
        assert!(!in_cluster(Some(host), dir.path()));
    }
}
