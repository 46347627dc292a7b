//! Kubernetes enrichment end to end: kube's real client and watcher fill
//! the pod cache, and verdict lines from the XDP and proxy paths pick the
//! pod names up.
//!
//! No Kubernetes API server runs on these machines, so it is replaced by
//! canned responses: a local HTTP server on 127.0.0.1 answers
//! `GET /api/v1/pods` with the PodList in fixtures/k8s/pods-list.json and the
//! watch with the events in fixtures/k8s/pods-watch.jsonl (both in the shape
//! kube-apiserver writes: compact JSON, resourceVersions, a BOOKMARK), one
//! event at a time as the test releases them. Everything on our side of the
//! HTTP connection is the code that runs in a cluster.

use std::{
    convert::Infallible,
    io::{self, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{RawQuery, State},
    http::header::CONTENT_TYPE,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use dns_guard::{
    ebpf::events::{to_verdict, XdpEvent},
    k8s::{PodIndex, PodWatch},
    metrics::Metrics,
    proxy::Telemetry,
    verdict::{Verdict, VerdictLog},
};
use tokio::{net::TcpListener, sync::mpsc};

const LIST: &str = include_str!("fixtures/k8s/pods-list.json");
const WATCH: &str = include_str!("fixtures/k8s/pods-watch.jsonl");

/// The API server's stand-in: the list, then the first watch streams what
/// the test sends; later watches (kube reconnecting) stay open and quiet.
struct FakeApi {
    /// Query strings of every `GET /api/v1/pods`, in order.
    requests: Mutex<Vec<String>>,
    watch: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
}

async fn pods(State(api): State<Arc<FakeApi>>, RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    api.requests.lock().unwrap().push(query.clone());
    let json = [(CONTENT_TYPE, "application/json")];
    if !query.split('&').any(|kv| kv == "watch=true") {
        return (json, LIST).into_response();
    }
    let body = match api.watch.lock().unwrap().take() {
        Some(rx) => Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|line| (Ok::<_, Infallible>(line + "\n"), rx))
        })),
        None => Body::from_stream(futures_util::stream::pending::<Result<String, Infallible>>()),
    };
    (json, body).into_response()
}

async fn serve_fake_api() -> (SocketAddr, Arc<FakeApi>, mpsc::UnboundedSender<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let api = Arc::new(FakeApi { requests: Mutex::default(), watch: Mutex::new(Some(rx)) });
    let app = Router::new().route("/api/v1/pods", get(pods)).with_state(api.clone());
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, api, tx)
}

fn kube_config(addr: SocketAddr) -> kube::Config {
    kube::Config::new(format!("http://{addr}").parse().unwrap())
}

/// Waits for the watch thread to catch up; the bound only turns a hang
/// into a failure that says what never happened.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn owner(index: &PodIndex, ip: &str) -> Option<String> {
    index.lookup(ip.parse().unwrap()).map(|p| format!("{}/{}", p.namespace, p.name))
}

/// A writer whose lines the test reads back.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn json(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

fn xdp_event(client: &str) -> XdpEvent {
    XdpEvent {
        ts_ns: 0,
        rule_id: 0,
        client: client.parse().unwrap(),
        client_port: 40000,
        qtype: 1,
        wire_qname: b"\x04evil\x07example\x00".to_vec(),
        verdict: 1,
        action: 1,
        reason: 5,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_watch_follows_the_recorded_api_and_names_pods_in_verdicts() {
    let (addr, api, events) = serve_fake_api().await;
    let watch_lines: Vec<String> = WATCH.lines().map(str::to_string).collect();
    let [added, running, terminating, deleted, reused, bookmark] = watch_lines.try_into().unwrap();
    let index = PodIndex::default();
    let metrics = Metrics::new();
    let _watch = PodWatch::start(kube_config(addr), index.clone(), metrics.clone()).await.unwrap();

    // The list: running pods by both families, nothing for the rest.
    until("the listed pods", || owner(&index, "10.244.2.7").is_some()).await;
    assert_eq!(owner(&index, "10.244.1.5").as_deref(), Some("default/web-7d4b9c6f8-x2kqp"));
    assert_eq!(owner(&index, "fd00:10:244:1::5").as_deref(), Some("default/web-7d4b9c6f8-x2kqp"));
    assert_eq!(owner(&index, "fd00:10:244:2::7").as_deref(), Some("monitoring/prometheus-k8s-0"));
    assert_eq!(owner(&index, "172.18.0.3"), None, "hostNetwork kube-proxy shows the node's IP");
    assert_eq!(owner(&index, "10.244.1.9"), None, "a finished Job pod has given its IP back");
    assert_eq!(index.ips(), 4);
    assert_eq!(metrics.k8s_pods.get(), 2);
    {
        let requests = api.requests.lock().unwrap();
        assert!(!requests[0].contains("watch=true"), "list first: {requests:?}");
    }
    // The watch resumes from the list's resourceVersion.
    until("the watch request", || api.requests.lock().unwrap().len() >= 2).await;
    assert!(api.requests.lock().unwrap()[1].contains("resourceVersion=48213"), "{:?}", api.requests.lock().unwrap());

    // ADDED while Pending (no IP yet), then MODIFIED once it runs.
    events.send(added).unwrap();
    events.send(running).unwrap();
    until("cart's IP from MODIFIED", || owner(&index, "10.244.1.20").is_some()).await;
    assert_eq!(owner(&index, "10.244.1.20").as_deref(), Some("shop/cart-5f9c7d8b6-qwert"));
    assert_eq!(owner(&index, "fd00:10:244:1::14").as_deref(), Some("shop/cart-5f9c7d8b6-qwert"));
    assert_eq!(metrics.k8s_pods.get(), 3);

    // A verdict line from each layer, written while the watch is live.
    let out = Lines::default();
    let log = Arc::new(VerdictLog::to_writer(Box::new(out.clone())).with_pods(index.clone()));
    log.emit(to_verdict(&xdp_event("10.244.1.20"), None));
    log.emit(to_verdict(&xdp_event("fd00:10:244:2::7"), None));
    log.emit(to_verdict(&xdp_event("10.244.77.77"), None));
    // The proxy's client is CoreDNS on loopback: never a pod.
    let tel = Telemetry { log: log.clone(), metrics: metrics.clone(), allow_sample: 0.0 };
    let mut proxied = Verdict::new("proxy", "block", "nxdomain", "blocklist");
    proxied.client = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    tel.emit(proxied, "block", "");
    let lines = out.json();
    assert_eq!(lines.len(), 4);
    assert_eq!((&lines[0]["layer"], &lines[0]["pod_namespace"], &lines[0]["pod_name"]), (&"xdp".into(), &"shop".into(), &"cart-5f9c7d8b6-qwert".into()));
    assert_eq!((&lines[1]["pod_namespace"], &lines[1]["pod_name"]), (&"monitoring".into(), &"prometheus-k8s-0".into()));
    for l in &lines[2..] {
        assert!(l.get("pod_namespace").is_none() && l.get("pod_name").is_none(), "{l}");
    }

    // Graceful deletion: the pod keeps its IP until DELETED.
    events.send(terminating).unwrap();
    events.send(deleted).unwrap();
    until("web's IPs dropped on DELETED", || owner(&index, "10.244.1.5").is_none()).await;
    assert_eq!(owner(&index, "fd00:10:244:1::5"), None);
    assert_eq!(metrics.k8s_pods.get(), 2);

    // The IPs go to the ReplicaSet's next pod.
    events.send(reused).unwrap();
    until("the reused IP", || owner(&index, "10.244.1.5").is_some()).await;
    assert_eq!(owner(&index, "10.244.1.5").as_deref(), Some("default/web-7d4b9c6f8-m9zt4"));

    // A BOOKMARK moves the resume point; when the server ends the stream,
    // kube watches again from there, without a relist.
    events.send(bookmark).unwrap();
    drop(events);
    until("the re-watch", || api.requests.lock().unwrap().len() >= 3).await;
    let requests = api.requests.lock().unwrap().clone();
    assert!(requests[2].contains("watch=true") && requests[2].contains("resourceVersion=48300"), "{requests:?}");
    assert_eq!(owner(&index, "10.244.1.20").as_deref(), Some("shop/cart-5f9c7d8b6-qwert"));
    assert_eq!(metrics.k8s_watch_errors.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_never_holds_up_verdicts() {
    // A port nothing listens on: every list call is refused.
    let closed = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let index = PodIndex::default();
    let metrics = Metrics::new();
    let _watch = PodWatch::start(kube_config(addr), index.clone(), metrics.clone()).await.unwrap();
    let out = Lines::default();
    let log = VerdictLog::to_writer(Box::new(out.clone())).with_pods(index.clone());
    until("a counted watch error", || {
        log.emit(to_verdict(&xdp_event("10.244.1.20"), None));
        metrics.k8s_watch_errors.get() >= 1
    })
    .await;
    let lines = out.json();
    assert!(!lines.is_empty());
    for l in &lines {
        assert_eq!(l["client"], "10.244.1.20");
        assert!(l.get("pod_name").is_none(), "{l}");
    }
    assert_eq!(log.emitted() as usize, lines.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_that_never_answers_never_holds_up_verdicts() {
    // Accepts the connection, reads the list request, and stays silent.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (got_request, mut request_seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::io::AsyncReadExt::read(&mut conn, &mut buf).await.unwrap();
        got_request.send(String::from_utf8_lossy(&buf[..n]).into_owned()).unwrap();
        std::future::pending::<()>().await;
    });
    let index = PodIndex::default();
    let metrics = Metrics::new();
    let _watch = PodWatch::start(kube_config(addr), index.clone(), metrics.clone()).await.unwrap();
    let request = request_seen.recv().await.unwrap();
    assert!(request.starts_with("GET /api/v1/pods?"), "{request}");

    // The list call is now hanging; verdicts go out regardless.
    let out = Lines::default();
    let log = VerdictLog::to_writer(Box::new(out.clone())).with_pods(index);
    for _ in 0..100 {
        log.emit(to_verdict(&xdp_event("10.244.1.20"), None));
    }
    let lines = out.json();
    assert_eq!(lines.len(), 100);
    assert!(lines.iter().all(|l| l.get("pod_name").is_none()));
}
