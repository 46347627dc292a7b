//! End-to-end tests of the proxy on loopback. The "upstreams" are tiny
//! tokio responders bound to 127.0.0.1 ports the test chooses: a test
//! double for a real resolver, which also plays the off-path forger (wrong
//! txid, wrong case, wrong source port) that the checks must survive.

use std::{
    io::{self, Write},
    net::SocketAddr,

    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        rdata::{A, CNAME, SOA},
        Name, RData, Record, RecordType,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, UdpSocket},
};

use super::{response::ede_of, start, ProxyHandle, ProxySettings};
use crate::{
    admin::Shutdown,
    config::{DnssecMode, DynBlockAction, RandomSubdomainConfig, RebindingConfig, SpoofConfig, Upstream},
    dynblock::DynBlocks,
    ebpf::events::{RuleIndex, SharedRuleIndex},
    lists::{parse_str, ListKind, RuleSet},
    metrics::Metrics,
    verdict::VerdictLog,
};

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn lines(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

/// What the fake upstream sends for one query: datagrams from its own
/// socket or from a stranger's, in order.
enum Reply {
    Real(Message),
    FromStranger(Message),
    /// These bytes, from the upstream's own socket (UDP only).
    RealBytes(Vec<u8>),
}

type Script = Arc<dyn Fn(&Message) -> Vec<Reply> + Send + Sync>;

/// A fake upstream on 127.0.0.1: UDP and TCP on one port.
struct FakeUpstream {
    addr: SocketAddr,
    udp_queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
    /// Source port of each UDP query, in order.
    udp_ports: Arc<Mutex<Vec<u16>>>,
}

impl FakeUpstream {
    async fn start(udp_script: Script, tcp_script: Script) -> Self {
        let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = udp.local_addr().unwrap();
        let tcp = TcpListener::bind(addr).await.unwrap();
        let stranger = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let (udp_queries, tcp_queries) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let udp_ports = Arc::new(Mutex::new(Vec::new()));
        let (uq, ports) = (udp_queries.clone(), udp_ports.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, from) = udp.recv_from(&mut buf).await.unwrap();
                let Ok(q) = Message::from_vec(&buf[..n]) else { continue };
                uq.fetch_add(1, Ordering::SeqCst);
                ports.lock().unwrap().push(from.port());
                for s in udp_script(&q) {
                    let (sock, bytes) = match s {
                        Reply::Real(m) => (&udp, m.to_vec().unwrap()),
                        Reply::FromStranger(m) => (&stranger, m.to_vec().unwrap()),
                        Reply::RealBytes(b) => (&udp, b),
                    };
                    sock.send_to(&bytes, from).await.unwrap();
                }
            }
        });
        let tq = tcp_queries.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = tcp.accept().await.unwrap();
                let (script, tq) = (tcp_script.clone(), tq.clone());
                tokio::spawn(async move {
                    let n = s.read_u16().await.unwrap() as usize;
                    let mut buf = vec![0u8; n];
                    s.read_exact(&mut buf).await.unwrap();
                    let q = Message::from_vec(&buf).unwrap();
                    tq.fetch_add(1, Ordering::SeqCst);
                    if let Some(Reply::Real(m)) = script(&q).into_iter().next() {
                        let b = m.to_vec().unwrap();
                        s.write_all(&(b.len() as u16).to_be_bytes()).await.unwrap();
                        s.write_all(&b).await.unwrap();
                    }
                    // Open for more queries until the client closes, as a
                    // server does (RFC 7766 §6.2.3).
                    let _ = s.read_u8().await;
                });
            }
        });
        FakeUpstream { addr, udp_queries, tcp_queries, udp_ports }
    }
}

/// The genuine answer to `q`: its id and question, these records.
fn answer(q: &Message, records: &[Record]) -> Message {
    let mut m = Message::response(q.metadata.id, OpCode::Query);
    m.metadata.recursion_available = true;
    m.add_query(q.queries[0].clone());
    for r in records {
        m.add_answer(r.clone());
    }
    m
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn a_record(owner: &Name, ip: [u8; 4]) -> Record {
    Record::from_rdata(owner.clone(), 60, RData::A(A::new(ip[0], ip[1], ip[2], ip[3])))
}

/// Answers every query with one A record.
fn answers_with(ip: [u8; 4]) -> Script {
    Arc::new(move |q: &Message| vec![Reply::Real(answer(q, &[a_record(q.queries[0].name(), ip)]))])
}

fn settings(upstreams: Vec<SocketAddr>) -> ProxySettings {
    ProxySettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstreams: upstreams.into_iter().map(Upstream::Plain).collect(),
        tls: None,
        no_0x20: Vec::new(),
        dnssec: DnssecMode::Off,
        anchors: Default::default(),
        rebinding: RebindingConfig::default(),
        spoof: SpoofConfig { threshold: 10, window_s: 60, tcp_cooldown_s: 300 },
        paranoid: false,
        timeout: Duration::from_millis(1000),
        query_timeout: Duration::from_secs(30),
        allow_sample: 1.0,
        block_dry_run: false,
    }
}

struct Proxy {
    handle: ProxyHandle,
    log: Sink,
    metrics: Metrics,
    index: SharedRuleIndex,
}

async fn proxy(s: ProxySettings) -> Proxy {
    proxy_with(s, Shutdown::default()).await
}

async fn proxy_with(s: ProxySettings, shutdown: Shutdown) -> Proxy {
    proxy_full(s, shutdown, RandomSubdomainConfig::default()).await
}

async fn proxy_full(s: ProxySettings, shutdown: Shutdown, rs: RandomSubdomainConfig) -> Proxy {
    let log = Sink::default();
    let metrics = Metrics::new();
    let index: SharedRuleIndex = Arc::new(RwLock::new(None));
    let log_out = Arc::new(VerdictLog::to_writer(Box::new(log.clone())));
    let dynblocks = Arc::new(DynBlocks::new(rs, false, log_out.clone(), metrics.clone()));
    let handle = start(s, index.clone(), dynblocks, log_out, metrics.clone(), shutdown).await.unwrap();
    Proxy { handle, log, metrics, index }
}

impl Proxy {
    fn set_blocklist(&self, text: &str) {
        let mut rules = RuleSet::default();
        parse_str(text, "block.txt".as_ref(), ListKind::Block, &mut rules);
        *self.index.write().unwrap() = Some(RuleIndex::new(0, Arc::new(rules)));
    }

    async fn ask(&self, qname: &str) -> Message {
        let mut q = Message::new(0xbeef, MessageType::Query, OpCode::Query);
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(name(qname), RecordType::A));
        q.set_edns(Edns::new());
        self.ask_raw(&q.to_vec().unwrap()).await.expect("an answer")
    }

    async fn ask_raw(&self, bytes: &[u8]) -> Option<Message> {
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(bytes, self.handle.local_addr).await.unwrap();
        let mut buf = vec![0u8; 65535];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), c.recv_from(&mut buf)).await.ok()?.unwrap();
        Some(Message::from_vec(&buf[..n]).unwrap())
    }

    fn verdicts(&self) -> Vec<String> {
        self.log.lines().iter().map(|v| v["verdict"].as_str().unwrap().to_string()).collect()
    }
}

fn ips(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn forwards_and_answers_in_the_clients_spelling() {
    let up = FakeUpstream::start(answers_with([192, 0, 2, 1]), answers_with([192, 0, 2, 1])).await;
    let p = proxy(settings(vec![up.addr])).await;
    let m = p.ask("Www.Example.COM.").await;
    assert_eq!(m.metadata.id, 0xbeef);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.queries[0].name().eq_case(&name("Www.Example.COM.")));
    assert!(m.answers[0].name.eq_case(&name("Www.Example.COM.")));
    assert_eq!(ips(&m), ["192.0.2.1"]);
    let lines = p.log.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let v = &lines[0];
    assert_eq!((v["layer"].as_str(), v["verdict"].as_str()), (Some("proxy"), Some("allow")));
    assert_eq!(v["qname"], "www.example.com");
    assert_eq!(v["upstream"], up.addr.to_string());
    assert_eq!(v["rcode"], "NOERROR");
    assert_eq!(v["dnssec"], "off");
    assert!(v["latency_ms"].as_f64().is_some());
    let text = p.metrics.encode();
    assert!(text.contains(&format!(r#"verdict="allow",upstream="{}"}} 1"#, up.addr)), "{text}");
    assert!(text.contains("dns_guard_upstream_latency_seconds_count"), "{text}");
}

/// RFC 5452 §9.2: a forger must guess the source port as well as the txid,
/// so every upstream query leaves from a socket of its own on a port the
/// kernel picked at random. One shared socket would show one port here.
#[tokio::test]
async fn each_upstream_query_leaves_from_its_own_random_port() {
    let up = FakeUpstream::start(answers_with([192, 0, 2, 7]), answers_with([192, 0, 2, 7])).await;
    let p = proxy(settings(vec![up.addr])).await;
    for i in 0..20 {
        assert_eq!(ips(&p.ask(&format!("n{i}.example.com.")).await), ["192.0.2.7"]);
    }
    let mut ports = up.udp_ports.lock().unwrap().clone();
    assert_eq!(ports.len(), 20);
    ports.sort_unstable();
    ports.dedup();
    // Random picks from ~28k ephemeral ports may repeat a port now and then.
    assert!(ports.len() >= 15, "{} distinct source ports for 20 queries: {ports:?}", ports.len());
}

/// RFC 6891 §6.1.3: an extended rcode lives in the OPT record, and a stub
/// reads only the header's four bits. An answer with rcode 16 (header 0,
/// OPT 1) would pass as NOERROR with records that check 6 never judged.
#[tokio::test]
async fn an_extended_rcode_becomes_servfail_and_no_record_passes() {
    let script: Script = Arc::new(|q: &Message| {
        let mut m = answer(q, &[a_record(q.queries[0].name(), [6, 6, 6, 6])]);
        m.set_edns(Edns::new());
        m.metadata.response_code = ResponseCode::from(1, 0);
        vec![Reply::Real(m)]
    });
    let up = FakeUpstream::start(script.clone(), script).await;
    let p = proxy(settings(vec![up.addr])).await;
    let m = p.ask("ext.example.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{m}");
    assert!(m.answers.is_empty() && m.authorities.is_empty() && m.additionals.is_empty(), "{m}");
    assert_eq!(p.verdicts(), ["servfail"]);
    assert_eq!(p.log.lines()[0]["reason"], "extended-rcode", "not the upstream's own SERVFAIL");
}

/// RFC 1035 §4.1.1: records on a REFUSED (or any rcode but NOERROR and
/// NXDOMAIN) are not data; they are not passed on.
#[tokio::test]
async fn records_on_an_error_rcode_are_dropped() {
    let script: Script = Arc::new(|q: &Message| {
        let mut m = answer(q, &[a_record(q.queries[0].name(), [6, 6, 6, 6])]);
        m.metadata.response_code = ResponseCode::Refused;
        vec![Reply::Real(m)]
    });
    let up = FakeUpstream::start(script.clone(), script).await;
    let p = proxy(settings(vec![up.addr])).await;
    let m = p.ask("refused.example.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{m}");
    assert!(m.answers.is_empty(), "{m}");
    // Passed on, and logged as the upstream's refusal, not as "ok".
    let line = &p.log.lines()[0];
    assert_eq!((line["verdict"].as_str(), line["reason"].as_str()), (Some("allow"), Some("upstream-refused")), "{line}");
}

/// An answer with the right port, txid, question and 0x20 case that
/// hickory cannot parse is the upstream's own: a failed exchange at once
/// (SERVFAIL with EDE 0 when no other upstream answers), not a wait for
/// the timeout, and no spoof count, so a pod that looks up such a record
/// cannot raise a poisoning alert or force an upstream onto TCP.
#[tokio::test]
async fn the_upstreams_unparseable_answer_is_a_servfail_not_a_spoof() {
    let script: Script = Arc::new(|q: &Message| {
        let mut raw = answer(q, &[a_record(q.queries[0].name(), [192, 0, 2, 1])]).to_vec().unwrap();
        raw[7] = 2; // a second answer record that is not there
        vec![Reply::RealBytes(raw)]
    });
    let up = FakeUpstream::start(script, answers_with([192, 0, 2, 1])).await;
    let mut s = settings(vec![up.addr]);
    s.timeout = Duration::from_secs(3);
    let p = proxy(s).await;
    let started = std::time::Instant::now();
    let m = p.ask("unreadable.example.").await;
    assert!(started.elapsed() < Duration::from_secs(2), "waited {:?}", started.elapsed());
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(ede_of(&m).iter().map(|(code, _)| *code).collect::<Vec<_>>(), [0], "{m}");
    let lines = p.log.lines();
    assert_eq!(lines.iter().map(|v| v["reason"].as_str().unwrap()).collect::<Vec<_>>(), ["unreadable-answer"]);
    let text = p.metrics.encode();
    assert!(!text.contains("dns_guard_spoof_responses_total{"), "{text}");
    assert!(text.contains(&format!(r#"dns_guard_upstream_tcp_forced{{upstream="{}"}} 0"#, up.addr)), "{text}");
    // Asked again and again, the name does not mark its upstream down: the
    // upstream answered.
    for _ in 0..4 {
        assert_eq!(p.ask("unreadable.example.").await.metadata.response_code, ResponseCode::ServFail);
    }
    let text = p.metrics.encode();
    assert!(text.contains(&format!(r#"dns_guard_upstream_healthy{{upstream="{}"}} 1"#, up.addr)), "{text}");
}

/// RFC 6891 §7: a server that does not know EDNS answers a query with an
/// OPT record FORMERR, with no OPT of its own: it is asked again without
/// one. A FORMERR with an OPT (a server that knows EDNS) is passed on, and
/// so is one to a query that needs DO: without EDNS no signature returns.
#[tokio::test]
async fn a_formerr_to_edns_is_asked_again_without_it_unless_do_is_wanted() {
    let script: Script = Arc::new(|q: &Message| {
        let knows_edns = q.queries[0].name().to_lowercase().to_ascii().starts_with("knows.");
        if q.edns.is_none() {
            vec![Reply::Real(answer(q, &[a_record(q.queries[0].name(), [192, 0, 2, 9])]))]
        } else {
            let mut m = answer(q, &[]);
            m.metadata.response_code = ResponseCode::FormErr;
            if knows_edns {
                m.set_edns(Edns::new());
            }
            vec![Reply::Real(m)]
        }
    });
    let up = FakeUpstream::start(script, answers_with([192, 0, 2, 1])).await;
    let p = proxy(settings(vec![up.addr])).await;
    assert_eq!(ips(&p.ask("old-server.example.").await), ["192.0.2.9"]);
    assert_eq!(up.udp_queries.load(Ordering::SeqCst), 2);
    let m = p.ask("knows.example.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(up.udp_queries.load(Ordering::SeqCst), 3);
    // The client asks with DO.
    let mut q = Message::new(0xbeef, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(name("signed.example."), RecordType::A));
    let mut e = Edns::new();
    e.set_dnssec_ok(true);
    q.set_edns(e);
    let m = p.ask_raw(&q.to_vec().unwrap()).await.unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(up.udp_queries.load(Ordering::SeqCst), 4);
    let text = p.metrics.encode();
    assert!(!text.contains("dns_guard_spoof_responses_total{"), "{text}");
}

/// An error without a question, from the upstream's address and with the
/// right txid.
fn error_without_question(q: &Message, rcode: ResponseCode) -> Reply {
    let mut m = Message::error_msg(q.metadata.id, OpCode::Query, rcode);
    m.metadata.recursion_available = true;
    Reply::Real(m)
}

/// Such an error matches no query (RFC 5452 §4): a forger who guessed port
/// and txid but not the 0x20 case could send it. It does not end the wait,
/// so the real answer after it wins; nor is it counted as a spoof.
#[tokio::test]
async fn an_error_without_a_question_does_not_end_the_wait_and_is_no_spoof() {
    let raced: Script = Arc::new(|q: &Message| {
        vec![
            error_without_question(q, ResponseCode::Refused),
            Reply::Real(answer(q, &[a_record(q.queries[0].name(), [192, 0, 2, 4])])),
        ]
    });
    let up = FakeUpstream::start(raced, answers_with([192, 0, 2, 1])).await;
    let mut s = settings(vec![up.addr]);
    s.spoof = SpoofConfig { threshold: 0, window_s: 60, tcp_cooldown_s: 60 };
    let p = proxy(s).await;
    assert_eq!(ips(&p.ask("raced.example.").await), ["192.0.2.4"]);
    let text = p.metrics.encode();
    assert!(!text.contains("dns_guard_spoof_responses_total{"), "{text}");
    assert!(text.contains(&format!(r#"dns_guard_upstream_tcp_forced{{upstream="{}"}} 0"#, up.addr)), "{text}");

    // An upstream that only ever says REFUSED without a question: at its
    // timeout the next one is asked, and the error is named.
    let refusing: Script = Arc::new(|q: &Message| vec![error_without_question(q, ResponseCode::Refused)]);
    let bad = FakeUpstream::start(refusing, answers_with([192, 0, 2, 1])).await;
    let good = FakeUpstream::start(answers_with([192, 0, 2, 5]), answers_with([192, 0, 2, 5])).await;
    let mut s = settings(vec![bad.addr, good.addr]);
    s.timeout = Duration::from_millis(300);
    let p = proxy(s).await;
    assert_eq!(ips(&p.ask("r.example.").await), ["192.0.2.5"]);
    assert_eq!(bad.udp_queries.load(Ordering::SeqCst), 1);
    assert!(!p.metrics.encode().contains("dns_guard_spoof_responses_total{"));
}

#[tokio::test]
async fn forgeries_are_counted_and_the_real_answer_still_wins() {
    // The forger answers first, with every wrong field; the real answer
    // comes last. None of the forgeries may end the wait.
    let script: Script = Arc::new(|q: &Message| {
        let real = answer(q, &[a_record(q.queries[0].name(), [192, 0, 2, 1])]);
        let mut txid = answer(q, &[a_record(q.queries[0].name(), [6, 6, 6, 6])]);
        txid.metadata.id = q.metadata.id.wrapping_add(1);
        let mut case = txid.clone();
        case.metadata.id = q.metadata.id;
        case.queries[0].set_name(q.queries[0].name().to_lowercase());
        let mut question = case.clone();
        question.queries[0].set_name(name("other.example."));
        let source = answer(q, &[a_record(q.queries[0].name(), [6, 6, 6, 6])]);
        let mut v = vec![Reply::Real(txid), Reply::Real(question), Reply::FromStranger(source)];
        // Lower-casing only differs when 0x20 made an upper-case letter.
        if !q.queries[0].name().eq_case(&q.queries[0].name().to_lowercase()) {
            v.push(Reply::Real(case));
        }
        v.push(Reply::Real(real));
        v
    });
    let up = FakeUpstream::start(script, answers_with([192, 0, 2, 1])).await;
    let p = proxy(settings(vec![up.addr])).await;
    let m = p.ask("abcdefghijklmnopqrstuvwxyz.example.").await;
    assert_eq!(ips(&m), ["192.0.2.1"]);
    let text = p.metrics.encode();
    for kind in ["wrong_txid", "wrong_question", "wrong_source", "case_mismatch"] {
        assert!(text.contains(&format!(r#"kind="{kind}"}} 1"#)), "{kind}: {text}");
    }
    let v = p.verdicts();
    assert_eq!(v.iter().filter(|v| *v == "spoof").count(), 4, "{v:?}");
    assert_eq!(v.last().map(String::as_str), Some("allow"));
}

/// Over UDP: four answers with wrong txids, then the real one (192.0.2.1).
fn four_forgeries_then_the_answer() -> Script {
    Arc::new(|q: &Message| {
        let mut v: Vec<Reply> = (1..=4)
            .map(|i| {
                let mut f = answer(q, &[]);
                f.metadata.id = q.metadata.id.wrapping_add(i);
                Reply::Real(f)
            })
            .collect();
        v.push(Reply::Real(answer(q, &[a_record(q.queries[0].name(), [192, 0, 2, 1])])));
        v
    })
}

#[tokio::test]
async fn spoofing_past_the_threshold_moves_the_upstream_to_tcp() {
    let up = FakeUpstream::start(four_forgeries_then_the_answer(), answers_with([192, 0, 2, 2])).await;
    let mut s = settings(vec![up.addr]);
    s.spoof = SpoofConfig { threshold: 3, window_s: 60, tcp_cooldown_s: 300 };
    let p = proxy(s).await;
    assert_eq!(ips(&p.ask("one.example.").await), ["192.0.2.1"]);
    assert_eq!(up.tcp_queries.load(Ordering::SeqCst), 0);
    let v = p.verdicts();
    assert_eq!(v.iter().filter(|v| *v == "poisoning-attempt").count(), 1, "{v:?}");
    // Past the threshold only the summary is logged.
    assert_eq!(v.iter().filter(|v| *v == "spoof").count(), 3, "{v:?}");
    let alert = p.log.lines().into_iter().find(|l| l["verdict"] == "poisoning-attempt").unwrap();
    assert_eq!(alert["action"], "tcp");
    assert!(alert["reason"].as_str().unwrap().contains("wrong_txid=4"), "{alert}");
    assert!(p.metrics.encode().contains(&format!(r#"dns_guard_upstream_tcp_forced{{upstream="{}"}} 1"#, up.addr)));

    // The next query goes straight to TCP.
    assert_eq!(ips(&p.ask("two.example.").await), ["192.0.2.2"]);
    assert_eq!(up.tcp_queries.load(Ordering::SeqCst), 1);
    assert_eq!(up.udp_queries.load(Ordering::SeqCst), 1);
}

/// Datagrams from another address (any pod spraying the ephemeral ports,
/// no spoofing needed) are counted and logged, but never move the upstream
/// to TCP: they could not have been accepted.
#[tokio::test]
async fn datagrams_from_strangers_do_not_move_the_upstream_to_tcp() {
    let strangers: Script = Arc::new(|q: &Message| {
        let mut v: Vec<Reply> = (0..6).map(|_| Reply::FromStranger(answer(q, &[a_record(q.queries[0].name(), [6, 6, 6, 6])]))).collect();
        v.push(Reply::Real(answer(q, &[a_record(q.queries[0].name(), [192, 0, 2, 1])])));
        v
    });
    let up = FakeUpstream::start(strangers, answers_with([192, 0, 2, 2])).await;
    let mut s = settings(vec![up.addr]);
    s.spoof = SpoofConfig { threshold: 3, window_s: 60, tcp_cooldown_s: 300 };
    let p = proxy(s).await;
    assert_eq!(ips(&p.ask("one.example.").await), ["192.0.2.1"]);
    assert_eq!(ips(&p.ask("two.example.").await), ["192.0.2.1"], "still on UDP");
    assert_eq!(up.tcp_queries.load(Ordering::SeqCst), 0);
    let v = p.verdicts();
    assert_eq!(v.iter().filter(|v| *v == "poisoning-attempt").count(), 0, "{v:?}");
    // Logged up to the threshold, counted past it.
    assert_eq!(v.iter().filter(|v| *v == "spoof").count(), 3, "{v:?}");
    assert!(p.metrics.encode().contains(r#"kind="wrong_source"} 12"#), "{}", p.metrics.encode());
}

/// A cooldown shorter than the window: when it ends, the window starts
/// over, so forgeries that go on are alerted and answered with TCP again
/// instead of passing unanswered until the window rolls over.
#[tokio::test]
async fn an_attack_that_outlasts_the_cooldown_moves_the_upstream_to_tcp_again() {
    let up = FakeUpstream::start(four_forgeries_then_the_answer(), answers_with([192, 0, 2, 2])).await;
    let mut s = settings(vec![up.addr]);
    s.spoof = SpoofConfig { threshold: 3, window_s: 60, tcp_cooldown_s: 1 };
    let p = proxy(s).await;
    assert_eq!(ips(&p.ask("one.example.").await), ["192.0.2.1"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The cooldown is over: UDP again, the forgeries again.
    assert_eq!(ips(&p.ask("two.example.").await), ["192.0.2.1"]);
    let v = p.verdicts();
    assert_eq!(v.iter().filter(|v| *v == "poisoning-attempt").count(), 2, "{v:?}");
    assert_eq!(ips(&p.ask("three.example.").await), ["192.0.2.2"], "back on TCP");
    assert_eq!(up.tcp_queries.load(Ordering::SeqCst), 1);
}

/// Over UDP: an empty answer with TC set, so every query goes on over TCP.
fn truncated_over_udp() -> Script {
    Arc::new(|q: &Message| {
        let mut m = answer(q, &[]);
        m.metadata.truncation = true;
        vec![Reply::Real(m)]
    })
}

/// Sockets in TIME_WAIT towards `server` (IPv4 loopback), from /proc/net/tcp.
fn time_wait_towards(server: SocketAddr) -> usize {
    let remote = format!("0100007F:{:04X}", server.port());
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(2) == Some(&remote.as_str()) && f.get(3) == Some(&"06")
        })
        .count()
}

/// A connection per TCP query, closed by the proxy once the answer is read:
/// with a FIN, each would hold a local port in TIME_WAIT for 60 s, and an
/// upstream on TCP (a spoofing cool-down) would run out of ports near 470
/// queries a second. The proxy resets it instead.
#[tokio::test]
async fn a_tcp_exchange_leaves_no_port_in_time_wait() {
    let up = FakeUpstream::start(truncated_over_udp(), answers_with([192, 0, 2, 7])).await;
    let p = proxy(settings(vec![up.addr])).await;
    for i in 0..5 {
        assert_eq!(ips(&p.ask(&format!("n{i}.example.")).await), ["192.0.2.7"]);
    }
    assert_eq!(up.tcp_queries.load(Ordering::SeqCst), 5);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(time_wait_towards(up.addr), 0);
}

/// A cool-down ends on the health probe's clock too: an upstream no query
/// uses any more (a backup) does not show TCP forced for ever.
#[tokio::test]
async fn a_cool_down_ends_for_an_upstream_no_query_uses() {
    let up = FakeUpstream::start(four_forgeries_then_the_answer(), answers_with([192, 0, 2, 2])).await;
    let mut s = settings(vec![up.addr]);
    s.spoof = SpoofConfig { threshold: 3, window_s: 60, tcp_cooldown_s: 1 };
    let p = proxy(s).await;
    assert_eq!(ips(&p.ask("one.example.").await), ["192.0.2.1"]);
    let forced = |v: u8| format!(r#"dns_guard_upstream_tcp_forced{{upstream="{}"}} {v}"#, up.addr);
    assert!(p.metrics.encode().contains(&forced(1)));
    // No query after it: the probe, every 5 s, ends the cool-down.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(p.metrics.encode().contains(&forced(0)), "{}", p.metrics.encode());
}

#[tokio::test]
async fn truncated_answers_are_retried_over_tcp() {
    let up = FakeUpstream::start(truncated_over_udp(), answers_with([192, 0, 2, 7])).await;
    let p = proxy(settings(vec![up.addr])).await;
    assert_eq!(ips(&p.ask("big.example.").await), ["192.0.2.7"]);
    assert_eq!(up.tcp_queries.load(Ordering::SeqCst), 1);
    assert_eq!(p.log.lines()[0]["reason"], "ok-tcp");
}

/// An answer cut at the datagram's limit mid-record, with TC set, does not
/// parse; it is still a truncated answer, retried over TCP, not an
/// unreadable one answered SERVFAIL.
#[tokio::test]
async fn a_truncated_answer_cut_mid_record_is_retried_over_tcp() {
    let script: Script = Arc::new(|q: &Message| {
        let owner = q.queries[0].name().clone();
        let mut m = answer(q, &[a_record(&owner, [192, 0, 2, 1]), a_record(&owner, [192, 0, 2, 2])]);
        m.metadata.truncation = true;
        let raw = m.to_vec().unwrap();
        vec![Reply::RealBytes(raw[..raw.len() - 3].to_vec())]
    });
    let up = FakeUpstream::start(script, answers_with([192, 0, 2, 7])).await;
    let p = proxy(settings(vec![up.addr])).await;
    let m = p.ask("cut.example.").await;
    assert_eq!(ips(&m), ["192.0.2.7"], "{m}");
    assert!(!m.metadata.truncation);
    assert_eq!(up.tcp_queries.load(Ordering::SeqCst), 1);
    assert_eq!(p.log.lines()[0]["reason"], "ok-tcp");
}

/// An answer that is still truncated over TCP (over 64 KiB, or TC from a
/// confused server) keeps TC on its way to the client: CoreDNS must not
/// cache it as whole.
#[tokio::test]
async fn an_answer_truncated_over_tcp_reaches_the_client_with_tc() {
    let tcp_truncated: Script = Arc::new(|q: &Message| {
        let mut m = answer(q, &[a_record(q.queries[0].name(), [192, 0, 2, 7])]);
        m.metadata.truncation = true;
        vec![Reply::Real(m)]
    });
    let up = FakeUpstream::start(truncated_over_udp(), tcp_truncated).await;
    let p = proxy(settings(vec![up.addr])).await;
    let m = p.ask("huge.example.").await;
    assert!(m.metadata.truncation, "{m}");
    assert_eq!(up.tcp_queries.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_dead_upstream_fails_over_and_all_dead_is_servfail() {
    // Bound and never read: a blackholed upstream.
    let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    let up = FakeUpstream::start(answers_with([192, 0, 2, 9]), answers_with([192, 0, 2, 9])).await;
    let mut s = settings(vec![dead_addr, up.addr]);
    s.timeout = Duration::from_millis(200);
    let p = proxy(s).await;
    let dead_health = |p: &Proxy| {
        let text = p.metrics.encode();
        let healthy = format!(r#"dns_guard_upstream_healthy{{upstream="{dead_addr}"}} 1"#);
        text.contains(&healthy)
    };
    assert_eq!(ips(&p.ask("a.example.").await), ["192.0.2.9"]);
    // One lost exchange is not an outage (CoreDNS's max_fails is 2 too).
    assert!(dead_health(&p), "one failure marked the upstream down");
    assert_eq!(ips(&p.ask("a2.example.").await), ["192.0.2.9"]);
    assert!(!dead_health(&p), "two failures in a row left the upstream up");
    // Now the healthy one is asked first: the dead one never sees
    // b.example (health probes, for ".", may reach it meanwhile).
    assert_eq!(ips(&p.ask("b.example.").await), ["192.0.2.9"]);
    let mut asked = Vec::new();
    let mut buf = [0u8; 1500];
    while let Ok((n, _)) = dead.try_recv_from(&mut buf) {
        if let Ok(m) = Message::from_vec(&buf[..n]) {
            asked.push(m.queries[0].name().to_lowercase().to_ascii());
        }
    }
    for name in ["a.example.", "a2.example."] {
        assert!(asked.iter().any(|n| n == name), "the dead upstream was not tried first for {name}: {asked:?}");
    }
    assert!(!asked.iter().any(|n| n == "b.example."), "{asked:?}");

    let mut s = settings(vec![dead_addr]);
    s.timeout = Duration::from_millis(100);
    let p = proxy(s).await;
    let m = p.ask("c.example.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(ede_of(&m)[0].0, 22);
    assert_eq!(p.verdicts(), ["servfail"]);
    drop(dead);
}

#[tokio::test]
async fn the_query_budget_ends_every_attempt_and_blames_no_upstream() {
    // Two blackholed upstreams, each worth a 2 s attempt; the query has 300 ms.
    let dead: Vec<UdpSocket> = vec![
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
    ];
    let mut s = settings(dead.iter().map(|d| d.local_addr().unwrap()).collect());
    s.timeout = Duration::from_millis(2000);
    s.query_timeout = Duration::from_millis(300);
    let p = proxy(s).await;
    let asked = std::time::Instant::now();
    let m = p.ask("slow.example.").await;
    let took = asked.elapsed();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    // Not a speed goal: one attempt's own timeout would be 2 s.
    assert!(took < Duration::from_millis(1500), "answered after {took:?}");
    let (code, text) = ede_of(&m)[0].clone();
    assert_eq!(code, 22);
    assert!(text.contains("proxy.query_timeout_ms (300 ms)"), "{text}");
    let v = &p.log.lines()[0];
    assert_eq!((v["verdict"].as_str(), v["reason"].as_str()), (Some("servfail"), Some("query-timeout")));
    // The first upstream was cut short, not found dead; the second never asked.
    let text = p.metrics.encode();
    for d in &dead {
        let addr = d.local_addr().unwrap();
        assert!(text.contains(&format!(r#"dns_guard_upstream_healthy{{upstream="{addr}"}} 1"#)), "{text}");
    }
    let mut buf = [0u8; 1500];
    assert!(dead[0].try_recv_from(&mut buf).is_ok(), "the first upstream was asked");
    assert!(dead[1].try_recv_from(&mut buf).is_err(), "the second upstream was asked after the budget ran out");
}

#[tokio::test]
async fn a_dead_upstream_is_still_marked_down_when_the_budget_equals_its_timeout() {
    // query_timeout_ms = timeout_ms, as when the budget is left unset with a
    // timeout of 5 s or more: the budget ends a hair before the attempt.
    let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    let up = FakeUpstream::start(answers_with([192, 0, 2, 9]), answers_with([192, 0, 2, 9])).await;
    let mut s = settings(vec![dead_addr, up.addr]);
    s.timeout = Duration::from_millis(300);
    s.query_timeout = Duration::from_millis(300);
    let p = proxy(s).await;
    for name in ["a.example.", "a2.example."] {
        assert_eq!(p.ask(name).await.metadata.response_code, ResponseCode::ServFail);
    }
    let text = p.metrics.encode();
    assert!(text.contains(&format!(r#"dns_guard_upstream_healthy{{upstream="{dead_addr}"}} 0"#)), "{text}");
    assert_eq!(ips(&p.ask("b.example.").await), ["192.0.2.9"], "no failover to the working upstream");
}

#[tokio::test]
async fn rebinding_answers_are_emptied_with_ede_15() {
    let up = FakeUpstream::start(answers_with([10, 0, 0, 1]), answers_with([10, 0, 0, 1])).await;
    let p = proxy(settings(vec![up.addr])).await;
    let m = p.ask("evil.example.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(ede_of(&m)[0].0, 15);
    let v = &p.log.lines()[0];
    assert_eq!((v["verdict"].as_str(), v["rule"].as_str()), (Some("rebind"), Some("10.0.0.0/8")));
    // cluster.local is allowed private space.
    assert_eq!(ips(&p.ask("kube-dns.kube-system.svc.cluster.local.").await), ["10.0.0.1"]);

    let meta = FakeUpstream::start(answers_with([169, 254, 169, 254]), answers_with([169, 254, 169, 254])).await;
    let p = proxy(settings(vec![meta.addr])).await;
    let m = p.ask("metadata.svc.cluster.local.").await;
    assert!(m.answers.is_empty());
    assert_eq!(p.log.lines()[0]["reason"], "metadata-address");
}

/// An answer to `q` that is a CNAME to x.tracker.test and its A record:
/// CNAME cloaking into a blocklisted name.
fn cname_into_tracker(q: &Message) -> Message {
    let target = name("x.tracker.test.");
    let cname = Record::from_rdata(q.queries[0].name().clone(), 60, RData::CNAME(CNAME(target.clone())));
    answer(q, &[cname, a_record(&target, [192, 0, 2, 1])])
}

#[tokio::test]
async fn blocklist_on_qname_and_cname_chain() {
    let cloak: Script = Arc::new(|q: &Message| vec![Reply::Real(cname_into_tracker(q))]);
    let up = FakeUpstream::start(cloak.clone(), cloak).await;
    let p = proxy(settings(vec![up.addr])).await;
    p.set_blocklist("||tracker.test^\nads.example\n");

    let m = p.ask("ads.example.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(ede_of(&m)[0].0, 15);
    assert_eq!(up.udp_queries.load(Ordering::SeqCst), 0, "a blocked qname is never forwarded");

    let m = p.ask("metrics.shop.example.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(ede_of(&m)[0].0, 15);
    let lines = p.log.lines();
    assert_eq!(lines[0]["reason"], "blocklist");
    assert_eq!(lines[0]["rule"], "ads.example");
    assert_eq!(lines[1]["reason"], "cname-cloaking");
    assert_eq!(lines[1]["rule"], "||tracker.test^");
    assert_eq!(lines[1]["list"], "block.txt:1");
}

/// `xdp.action: log` is a dry run here too: the blocklist check logs and
/// counts what it would block (action `log`), and the query is forwarded.
#[tokio::test]
async fn a_dry_run_logs_blocklisted_names_and_forwards_them() {
    // Only metrics.shop.example is a CNAME into the blocklist.
    let cloak: Script = Arc::new(|q: &Message| {
        let qn = q.queries[0].name().clone();
        if !qn.to_ascii().eq_ignore_ascii_case("metrics.shop.example.") {
            return vec![Reply::Real(answer(q, &[a_record(&qn, [192, 0, 2, 1])]))];
        }
        vec![Reply::Real(cname_into_tracker(q))]
    });
    let up = FakeUpstream::start(cloak.clone(), cloak).await;
    let p = proxy(ProxySettings { block_dry_run: true, ..settings(vec![up.addr]) }).await;
    p.set_blocklist("||tracker.test^\nads.example\n");

    for qname in ["ads.example.", "metrics.shop.example."] {
        let m = p.ask(qname).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{qname}");
        assert_eq!(ips(&m), ["192.0.2.1"], "{qname}: the upstream's answer");
        assert!(ede_of(&m).is_empty(), "{qname}: no EDE 15 on a forwarded answer");
    }
    assert_eq!(up.udp_queries.load(Ordering::SeqCst), 2, "both were forwarded");
    let lines = p.log.lines();
    let would: Vec<_> = lines.iter().filter(|l| l["verdict"] == "block").collect();
    assert_eq!(would.len(), 2, "{lines:?}");
    assert_eq!((would[0]["action"].as_str(), would[0]["reason"].as_str()), (Some("log"), Some("blocklist")));
    assert_eq!(would[0]["rule"], "ads.example");
    assert_eq!((would[1]["action"].as_str(), would[1]["reason"].as_str()), (Some("log"), Some("cname-cloaking")));
    assert_eq!(would[1]["list"], "block.txt:1");
    let allowed = lines.iter().filter(|l| l["verdict"] == "allow" && l["action"] == "forward").count();
    assert_eq!(allowed, 2, "what was done is logged too: {lines:?}");
    // Counted as dry-run, apart from the real blocks; each query also as
    // what happened to it.
    let text = p.metrics.encode();
    assert!(text.contains(r#"verdict="dry-run",upstream=""} 1"#), "{text}");
    assert!(text.contains(&format!(r#"verdict="dry-run",upstream="{}"}} 1"#, up.addr)), "{text}");
    assert!(!text.contains(r#"verdict="block""#), "{text}");
    assert!(text.contains(&format!(r#"verdict="allow",upstream="{}"}} 2"#, up.addr)), "{text}");
}

#[tokio::test]
async fn paranoid_mode_refuses_differing_answers() {
    let racing: Script = Arc::new(|q: &Message| {
        let n = q.queries[0].name();
        vec![Reply::Real(answer(q, &[a_record(n, [6, 6, 6, 6])])), Reply::Real(answer(q, &[a_record(n, [192, 0, 2, 1])]))]
    });
    let up = FakeUpstream::start(racing, answers_with([192, 0, 2, 1])).await;
    let mut s = settings(vec![up.addr]);
    s.paranoid = true;
    let p = proxy(s).await;
    let m = p.ask("raced.example.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let v = &p.log.lines()[0];
    assert_eq!((v["verdict"].as_str(), v["reason"].as_str()), (Some("spoof"), Some("differing-answers")));

    // Identical duplicates are fine.
    let dup: Script = Arc::new(|q: &Message| {
        let a = answer(q, &[a_record(q.queries[0].name(), [192, 0, 2, 1])]);
        vec![Reply::Real(a.clone()), Reply::Real(a)]
    });
    let up = FakeUpstream::start(dup, answers_with([192, 0, 2, 1])).await;
    let mut s = settings(vec![up.addr]);
    s.paranoid = true;
    let p = proxy(s).await;
    assert_eq!(ips(&p.ask("dup.example.").await), ["192.0.2.1"]);
}

#[tokio::test]
async fn garbage_gets_formerr_and_tcp_clients_are_served() {
    let up = FakeUpstream::start(answers_with([192, 0, 2, 1]), answers_with([192, 0, 2, 1])).await;
    let p = proxy(settings(vec![up.addr])).await;
    let m = p.ask_raw(&[0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0x3f]).await.unwrap();
    assert_eq!((m.metadata.id, m.metadata.response_code), (0xabcd, ResponseCode::FormErr));
    let line = &p.log.lines()[0];
    assert_eq!((line["verdict"].as_str(), line["action"].as_str(), line["rcode"].as_str()), (Some("malformed"), Some("formerr"), Some("FORMERR")));

    let mut q = Message::new(7, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(name("tcp.example."), RecordType::A));
    let b = q.to_vec().unwrap();
    let mut s = tokio::net::TcpStream::connect(p.handle.local_addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(&(b.len() as u16).to_be_bytes()).await.unwrap();
        s.write_all(&b).await.unwrap();
        let n = s.read_u16().await.unwrap() as usize;
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).await.unwrap();
        let m = Message::from_vec(&buf).unwrap();
        assert_eq!((m.metadata.id, ips(&m)), (7, vec!["192.0.2.1".to_string()]));
    }
}

/// RFC 7766 §6.2.1.1: queries pipelined on one TCP connection are
/// answered as each is ready. The first asks a name the upstream never
/// answers; the second's answer must not wait for its timeout.
#[tokio::test]
async fn pipelined_tcp_queries_are_answered_as_each_is_ready() {
    let script: Script = Arc::new(|q: &Message| {
        if q.queries[0].name().to_lowercase().to_ascii().starts_with("stuck.") {
            vec![]
        } else {
            vec![Reply::Real(answer(q, &[a_record(q.queries[0].name(), [192, 0, 2, 3])]))]
        }
    });
    let up = FakeUpstream::start(script, answers_with([192, 0, 2, 1])).await;
    let mut s = settings(vec![up.addr]);
    s.timeout = Duration::from_secs(2);
    let p = proxy(s).await;
    let mut conn = tokio::net::TcpStream::connect(p.handle.local_addr).await.unwrap();
    for (id, qname) in [(1, "stuck.example."), (2, "quick.example.")] {
        let mut q = Message::new(id, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(name(qname), RecordType::A));
        let b = q.to_vec().unwrap();
        conn.write_all(&[&(b.len() as u16).to_be_bytes()[..], &b].concat()).await.unwrap();
    }
    let mut read_one = async || {
        let n = conn.read_u16().await.unwrap() as usize;
        let mut buf = vec![0u8; n];
        conn.read_exact(&mut buf).await.unwrap();
        Message::from_vec(&buf).unwrap()
    };
    let started = std::time::Instant::now();
    let first = read_one().await;
    assert!(started.elapsed() < Duration::from_secs(1), "waited {:?}", started.elapsed());
    assert_eq!((first.metadata.id, ips(&first)), (2, vec!["192.0.2.3".to_string()]));
    // The stuck one still gets its answer on the same connection.
    let second = read_one().await;
    assert_eq!((second.metadata.id, second.metadata.response_code), (1, ResponseCode::ServFail));
}

/// Echoes the question in lower case, as some middleboxes and old
/// servers do: useless with 0x20, fine without it.
fn folds_case(seen: Arc<Mutex<Vec<Name>>>) -> Script {
    Arc::new(move |q: &Message| {
        let asked = q.queries[0].name().clone();
        seen.lock().unwrap().push(asked.clone());
        let mut m = answer(q, &[a_record(&asked.to_lowercase(), [192, 0, 2, 20])]);
        m.queries[0].set_name(asked.to_lowercase());
        vec![Reply::Real(m)]
    })
}

#[tokio::test]
async fn no_0x20_upstreams_are_asked_in_lower_case() {
    let qname = "abcdefghijklmnopqrstuvwxyz.example.";
    let seen = Arc::new(Mutex::new(Vec::new()));
    let up = FakeUpstream::start(folds_case(seen.clone()), folds_case(seen.clone())).await;

    // Default: 0x20 on. The folded echo is a case mismatch every time.
    let mut s = settings(vec![up.addr]);
    s.timeout = Duration::from_millis(200);
    let p = proxy(s.clone()).await;
    assert_eq!(p.ask(qname).await.metadata.response_code, ResponseCode::ServFail);
    assert!(p.metrics.encode().contains(r#"kind="case_mismatch"}"#));
    let mixed = seen.lock().unwrap().drain(..).next().unwrap();
    assert!(!mixed.eq_case(&mixed.to_lowercase()), "0x20 on, yet {mixed} went out in lower case");

    // Switched off for this upstream: lower case out, any case accepted back.
    s.no_0x20 = vec![up.addr];
    let p = proxy(s).await;
    assert_eq!(ips(&p.ask(qname).await), ["192.0.2.20"]);
    let sent = seen.lock().unwrap().drain(..).collect::<Vec<_>>();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].eq_case(&name(qname)), "{}", sent[0]);
    assert!(!p.metrics.encode().contains("case_mismatch"));
}

/// A UDP upstream that answers every query after `delay`: slow enough for
/// SIGTERM to land while queries are in flight.
async fn slow_upstream(delay: Duration) -> SocketAddr {
    let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = udp.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, from) = udp.recv_from(&mut buf).await.unwrap();
            let Ok(q) = Message::from_vec(&buf[..n]) else { continue };
            let udp = udp.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let m = answer(&q, &[a_record(q.queries[0].name(), [192, 0, 2, 30])]);
                udp.send_to(&m.to_vec().unwrap(), from).await.unwrap();
            });
        }
    });
    addr
}

#[tokio::test]
async fn drain_answers_in_flight_queries_and_takes_no_new_ones() {
    let delay = Duration::from_millis(400);
    let up = slow_upstream(delay).await;
    let shutdown = Shutdown::default();
    let p = Arc::new(proxy_with(settings(vec![up]), shutdown.clone()).await);
    let asks: Vec<_> = (0..5)
        .map(|i| {
            let p = p.clone();
            tokio::spawn(async move { p.ask_raw(&query_bytes(&format!("q{i}.example."))).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let readiness = crate::admin::Readiness::default();
    let t = std::time::Instant::now();
    let grace = Duration::from_secs(3);
    let left = shutdown.drain(&readiness, grace).await;
    let took = t.elapsed();
    assert_eq!(left, 0, "in-flight queries abandoned");
    assert!(took < grace && took >= delay - Duration::from_millis(150), "drain took {took:?}");
    for a in asks {
        let m = a.await.unwrap().expect("an in-flight query lost its answer in the drain");
        assert_eq!(ips(&m), ["192.0.2.30"]);
    }
    // Draining: a new query is not taken.
    let late = tokio::time::timeout(Duration::from_secs(1), p.ask_raw(&query_bytes("late.example."))).await;
    assert!(matches!(late, Err(_) | Ok(None)), "a query sent after SIGTERM was answered");
    assert!(!readiness.is_ready());
}

fn query_bytes(qname: &str) -> Vec<u8> {
    let mut q = Message::new(0xbeef, MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(name(qname), RecordType::A));
    q.to_vec().unwrap()
}

// --------------------------------------------------------------------------- DNS over TLS

mod dot {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tokio_rustls::{
        rustls::{
            self,
            pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
        },
        TlsAcceptor,
    };

    use crate::proxy::tls::client_config;

    /// A throwaway CA and a server certificate for `name` signed by it.
    struct Pki {
        ca_pem: String,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    }

    fn pki(name: &str) -> Pki {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()]).unwrap().signed_by(&key, &ca).unwrap();
        Pki {
            ca_pem: ca.pem(),
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// A DoT test double on 127.0.0.1: answers each query with one A
    /// record after `delay_for(qname)`, out of order when delays differ;
    /// with `hang_up_on` = n it closes a connection on its n-th query
    /// instead of answering (a server dropping an idle connection); its
    /// first `mute` connections read queries and never answer (a stalled
    /// connection).
    struct FakeDot {
        addr: SocketAddr,
        connections: Arc<AtomicUsize>,
        queries: Arc<Mutex<Vec<Message>>>,
        raw_lens: Arc<Mutex<Vec<usize>>>,
    }

    impl FakeDot {
        async fn start(pki: &Pki, hang_up_on: Option<usize>, mute: usize) -> Self {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(pki.chain.clone(), pki.key.clone_key())
                .unwrap();
            let acceptor = TlsAcceptor::from(Arc::new(config));
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let connections = Arc::new(AtomicUsize::new(0));
            let queries = Arc::new(Mutex::new(Vec::new()));
            let raw_lens = Arc::new(Mutex::new(Vec::new()));
            let (c, q, l) = (connections.clone(), queries.clone(), raw_lens.clone());
            tokio::spawn(async move {
                loop {
                    let (tcp, _) = listener.accept().await.unwrap();
                    let muted = c.fetch_add(1, Ordering::SeqCst) < mute;
                    let (acceptor, q, l) = (acceptor.clone(), q.clone(), l.clone());
                    tokio::spawn(async move {
                        // A client that rejects our certificate ends here.
                        let Ok(tls) = acceptor.accept(tcp).await else { return };
                        let (mut rd, wr) = tokio::io::split(tls);
                        let wr = Arc::new(tokio::sync::Mutex::new(wr));
                        let mut seen = 0;
                        loop {
                            let Ok(n) = rd.read_u16().await else { return };
                            let mut buf = vec![0u8; n as usize];
                            if rd.read_exact(&mut buf).await.is_err() {
                                return;
                            }
                            seen += 1;
                            if Some(seen) == hang_up_on {
                                return;
                            }
                            if muted {
                                continue;
                            }
                            let msg = Message::from_vec(&buf).unwrap();
                            l.lock().unwrap().push(buf.len());
                            q.lock().unwrap().push(msg.clone());
                            let wr = wr.clone();
                            tokio::spawn(async move {
                                let qn = msg.queries[0].name().to_ascii().to_lowercase();
                                if qn.starts_with("slow") {
                                    tokio::time::sleep(Duration::from_millis(600)).await;
                                }
                                let b = answer(&msg, &[a_record(msg.queries[0].name(), [192, 0, 2, 53])]).to_vec().unwrap();
                                let mut framed = (b.len() as u16).to_be_bytes().to_vec();
                                framed.extend_from_slice(&b);
                                let _ = wr.lock().await.write_all(&framed).await;
                            });
                        }
                    });
                }
            });
            FakeDot { addr, connections, queries, raw_lens }
        }
    }

    fn tls_upstream(addr: SocketAddr, server_name: &str) -> Upstream {
        Upstream::Tls { addr, server_name: server_name.to_string() }
    }

    /// Proxy settings for `upstreams`, trusting `ca_pem` (None: the
    /// built-in web PKI roots).
    fn tls_settings(upstreams: Vec<Upstream>, ca_pem: Option<&str>) -> (ProxySettings, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let tls = match ca_pem {
            Some(pem) => {
                let path = dir.path().join("ca.pem");
                std::fs::write(&path, pem).unwrap();
                client_config(Some(&path)).unwrap()
            }
            None => client_config(None).unwrap(),
        };
        let mut s = settings(Vec::new());
        s.upstreams = upstreams;
        s.tls = Some(tls);
        (s, dir)
    }

    #[tokio::test]
    async fn queries_go_over_one_reused_connection_and_pipeline() {
        let pki = pki("dot.test");
        let up = FakeDot::start(&pki, None, 0).await;
        let (s, _dir) = tls_settings(vec![tls_upstream(up.addr, "dot.test")], Some(&pki.ca_pem));
        let p = Arc::new(proxy(s).await);
        let label = format!("tls://{}@dot.test", up.addr);

        let m = p.ask("Www.Example.COM.").await;
        assert_eq!(ips(&m), ["192.0.2.53"]);
        assert!(m.answers[0].name.eq_case(&name("Www.Example.COM.")));
        let v = &p.log.lines()[0];
        assert_eq!((v["upstream"].as_str(), v["reason"].as_str()), (Some(label.as_str()), Some("ok-tls")));

        // A slow query, then a fast one on the same connection: the fast
        // answer comes first and must reach its own query.
        let slow = tokio::spawn({
            let p = p.clone();
            async move { p.ask("slow.example.").await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ips(&p.ask("fast.example.").await), ["192.0.2.53"]);
        assert!(!slow.is_finished(), "the fast query waited behind the slow one");
        let slow = slow.await.unwrap();
        assert_eq!(slow.queries[0].name().to_ascii(), "slow.example.");
        assert_eq!(ips(&slow), ["192.0.2.53"]);
        for i in 0..5 {
            p.ask(&format!("n{i}.example.")).await;
        }
        assert_eq!(up.connections.load(Ordering::SeqCst), 1, "one handshake for every query");

        // 0x20 is off over TLS, and every query is padded (RFC 8467).
        for q in up.queries.lock().unwrap().iter() {
            let n = q.queries[0].name();
            assert!(n.eq_case(&n.to_lowercase()), "{n} went out in mixed case");
        }
        assert!(up.raw_lens.lock().unwrap().iter().all(|l| l % 128 == 0), "{:?}", up.raw_lens.lock().unwrap());
        // No spoof accounting on an authenticated connection.
        assert!(!p.metrics.encode().contains("dns_guard_spoof_responses_total{"), "{}", p.metrics.encode());
    }

    #[tokio::test]
    async fn a_connection_closed_by_the_server_is_replaced() {
        let pki = pki("dot.test");
        // Every connection is dropped on its second query, unanswered.
        let up = FakeDot::start(&pki, Some(2), 0).await;
        let (s, _dir) = tls_settings(vec![tls_upstream(up.addr, "dot.test")], Some(&pki.ca_pem));
        let p = proxy(s).await;
        for i in 0..3 {
            assert_eq!(ips(&p.ask(&format!("r{i}.example.")).await), ["192.0.2.53"], "query {i}");
        }
        assert_eq!(up.connections.load(Ordering::SeqCst), 3);
        assert!(p.verdicts().iter().all(|v| v == "allow"), "{:?}", p.verdicts());
    }

    #[tokio::test]
    async fn a_stalled_connection_is_dropped_after_a_timeout() {
        let pki = pki("dot.test");
        let up = FakeDot::start(&pki, None, 1).await;
        let (mut s, _dir) = tls_settings(vec![tls_upstream(up.addr, "dot.test")], Some(&pki.ca_pem));
        s.timeout = Duration::from_millis(300);
        let p = proxy(s).await;
        assert_eq!(p.ask("lost.example.").await.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(ips(&p.ask("next.example.").await), ["192.0.2.53"]);
        assert_eq!(up.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_reply_the_query_budget_cut_short_neither_drops_the_connection_nor_the_upstream() {
        let pki = pki("dot.test");
        // The first connection reads every query and answers none.
        let up = FakeDot::start(&pki, None, 1).await;
        let dot = tls_upstream(up.addr, "dot.test");
        let (mut s, _dir) = tls_settings(vec![dot.clone()], Some(&pki.ca_pem));
        s.timeout = Duration::from_millis(2000);
        s.query_timeout = Duration::from_millis(300);
        let p = proxy(s).await;
        for i in 0..2 {
            let m = p.ask(&format!("cut{i}.example.")).await;
            assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "query {i}");
            assert_eq!(p.log.lines()[i]["reason"], "query-timeout");
        }
        // Both went to the one connection: a budget that ran out says nothing
        // of the connection, and dropping it would fail every query on it.
        assert_eq!(up.connections.load(Ordering::SeqCst), 1);
        let text = p.metrics.encode();
        assert!(text.contains(&format!(r#"dns_guard_upstream_healthy{{upstream="{dot}"}} 1"#)), "{text}");
    }

    #[tokio::test]
    async fn a_certificate_for_another_name_fails_over_and_alone_is_servfail() {
        let pki = pki("dot.test");
        let dot = FakeDot::start(&pki, None, 0).await;
        let plain = FakeUpstream::start(answers_with([192, 0, 2, 9]), answers_with([192, 0, 2, 9])).await;
        let wrong = tls_upstream(dot.addr, "wrong.test");
        let (mut s, _dir) = tls_settings(vec![wrong.clone(), Upstream::Plain(plain.addr)], Some(&pki.ca_pem));
        s.timeout = Duration::from_millis(500);
        let p = proxy(s).await;
        for name in ["a.example.", "a2.example."] {
            assert_eq!(ips(&p.ask(name).await), ["192.0.2.9"]);
        }
        let text = p.metrics.encode();
        assert!(text.contains(&format!(r#"dns_guard_upstream_healthy{{upstream="{wrong}"}} 0"#)), "{text}");
        assert!(dot.queries.lock().unwrap().is_empty(), "a query went to a server whose certificate failed");

        let (mut s, _dir) = tls_settings(vec![wrong], Some(&pki.ca_pem));
        s.timeout = Duration::from_millis(500);
        let p = proxy(s).await;
        let before = dot.connections.load(Ordering::SeqCst);
        for i in 0..3 {
            let m = p.ask(&format!("b{i}.example.")).await;
            assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
            let (code, text) = ede_of(&m).remove(0);
            assert_eq!(code, 22);
            assert!(text.contains("not valid for name") || text.contains("not redialing"), "{text}");
        }
        // Within the backoff the failed handshake is not repeated per query.
        assert_eq!(dot.connections.load(Ordering::SeqCst) - before, 1);
    }

    #[tokio::test]
    async fn an_untrusted_issuer_is_refused() {
        let pki = pki("dot.test");
        let dot = FakeDot::start(&pki, None, 0).await;
        // The web PKI roots (no proxy.tls_ca) do not know the test CA.
        let (mut s, _dir) = tls_settings(vec![tls_upstream(dot.addr, "dot.test")], None);
        s.timeout = Duration::from_millis(500);
        let p = proxy(s).await;
        let m = p.ask("c.example.").await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        let (_, text) = ede_of(&m).remove(0);
        assert!(text.contains("UnknownIssuer"), "{text}");
        assert!(dot.queries.lock().unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_random_subdomain_flood_blocks_the_zones_subdomains() {
    // victim.test answers NXDOMAIN for every random name (with its SOA, as
    // RFC 2308 asks) and NOERROR at its apex.
    let script: Script = Arc::new(|q: &Message| {
        let qname = q.queries[0].name().clone();
        if qname.num_labels() == 2 {
            return vec![Reply::Real(answer(q, &[a_record(&qname, [192, 0, 2, 53])]))];
        }
        let mut m = answer(q, &[]);
        m.metadata.response_code = ResponseCode::NXDomain;
        let soa = SOA::new(name("ns.victim.test."), name("admin.victim.test."), 1, 60, 60, 60, 60);
        m.add_authority(Record::from_rdata(name("Victim.Test."), 60, RData::SOA(soa)));
        vec![Reply::Real(m)]
    });
    let up = FakeUpstream::start(script.clone(), script).await;
    let rs = RandomSubdomainConfig { threshold: 5, window_s: 10, block_s: 60, ..RandomSubdomainConfig::default() };
    let p = proxy_full(settings(vec![up.addr]), Shutdown::default(), rs).await;
    for i in 0..6 {
        let m = p.ask(&format!("rnd{i}.victim.test.")).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "the upstream's answer, until the threshold");
    }
    let asked = up.udp_queries.load(Ordering::SeqCst);
    let m = p.ask("rnd-next.victim.test.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert_eq!(ede_of(&m).first().map(|(code, _)| *code), Some(15), "EDE 15 (Blocked)");
    assert_eq!(up.udp_queries.load(Ordering::SeqCst), asked, "a blocked name is not sent upstream");
    // The apex and other zones still resolve.
    assert_eq!(ips(&p.ask("victim.test.").await), ["192.0.2.53"]);
    let lines = p.log.lines();
    let start: Vec<_> = lines.iter().filter(|v| v["verdict"] == "random-subdomain").collect();
    assert_eq!(start.len(), 1, "one line when the block starts: {lines:?}");
    assert_eq!((start[0]["rule"].as_str(), start[0]["qname"].as_str(), start[0]["count"].as_u64()), (Some("*.victim.test"), Some("victim.test"), Some(6)));
    let blocked = lines.iter().find(|v| v["verdict"] == "block").expect("a block line");
    assert_eq!((blocked["reason"].as_str(), blocked["rule"].as_str(), blocked["action"].as_str()), (Some("random-subdomain"), Some("*.victim.test"), Some("refused")));
    let text = p.metrics.encode();
    assert!(text.contains("dns_guard_random_subdomain_blocks_total 1"), "{text}");
    assert!(text.contains("dns_guard_random_subdomain_blocked_zones 1"), "{text}");

    // `drop` is REFUSED here (the client is CoreDNS, which would retry a
    // silence), and the line's action says what was sent.
    let rs = RandomSubdomainConfig { threshold: 5, window_s: 10, block_s: 60, action: DynBlockAction::Drop, ..RandomSubdomainConfig::default() };
    let p = proxy_full(settings(vec![up.addr]), Shutdown::default(), rs).await;
    for i in 0..6 {
        p.ask(&format!("drop{i}.victim.test.")).await;
    }
    assert_eq!(p.ask("drop-next.victim.test.").await.metadata.response_code, ResponseCode::Refused);
    let lines = p.log.lines();
    let blocked = lines.iter().find(|v| v["verdict"] == "block").expect("a block line");
    assert_eq!(blocked["action"], "refused", "{lines:?}");

    // A dry run (`xdp.action: log`) wins over the block's action, as in the
    // kernel: logged, and the upstream's own answer goes back.
    let rs = RandomSubdomainConfig { threshold: 5, window_s: 10, block_s: 60, ..RandomSubdomainConfig::default() };
    let p = proxy_full(ProxySettings { block_dry_run: true, ..settings(vec![up.addr]) }, Shutdown::default(), rs).await;
    for i in 0..6 {
        p.ask(&format!("dry{i}.victim.test.")).await;
    }
    assert_eq!(p.ask("dry-next.victim.test.").await.metadata.response_code, ResponseCode::NXDomain, "the upstream's");
    let lines = p.log.lines();
    let would = lines.iter().find(|v| v["verdict"] == "block").expect("a block line");
    assert_eq!((would["action"].as_str(), would["qname"].as_str()), (Some("log"), Some("dry-next.victim.test")), "{lines:?}");
}
