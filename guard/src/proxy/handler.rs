//! One client query, start to finish: parse (FORMERR on garbage), the
//! blocklist on the qname, forward, then checks 5-8 on the answer, one
//! verdict line, the reply bytes.

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{RData, RecordType},
};
use tracing::debug;

use super::{
    checks::{answer_chain, check_blocklist, check_rebinding, dotted, scope_authority, scrub_bailiwick},
    dname,
    dnssec::{cap_authenticated_ttls, Security, Validator},
    response::{
        encode_udp, formerr_raw, forward_reply, header_reply, local_reply, ClientQuery, Ede, EDE_BLOCKED,
        EDE_DNSSEC_BOGUS, EDE_NO_REACHABLE_AUTHORITY, EDE_OTHER,
    },
    upstream::{ExchangeError, QueryCtx, Upstreams, Via, QUERY_DEADLINE},
    Telemetry,
};
use crate::{
    config::{DnssecMode, DynBlockAction, RebindingConfig},
    dynblock::{failure_zone, DynBlocks},
    ebpf::events::SharedRuleIndex,
    lists::{
        matcher::{MatchKind, RuleMatch},
        RuleSet,
    },
    verdict::{qtype_name, Verdict},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The reply's bytes for `transport`. hickory writes back what it read,
/// and truncates (TC) what does not fit, so `Err` is for a message it
/// cannot emit at all: it carries a SERVFAIL with EDE 0 to send instead,
/// never a silence the client would only retry.
fn wire_reply(m: &Message, client: &ClientQuery, transport: Transport) -> Result<Vec<u8>, Vec<u8>> {
    let bytes = match transport {
        Transport::Udp => encode_udp(m, client.udp_limit()),
        Transport::Tcp => m.to_vec().ok(),
    };
    bytes.ok_or_else(|| {
        let ede = Ede::new(EDE_OTHER, "answer cannot be encoded");
        // A header, the client's question and an EDE always encode.
        local_reply(client, ResponseCode::ServFail, Some(&ede)).to_vec().unwrap_or_default()
    })
}

/// What a request turned out to be.
#[derive(Debug)]
pub enum Parsed {
    /// A well-formed standard query with one question.
    Query(ClientQuery),
    /// Answered without forwarding (FORMERR, NOTIMP, REFUSED), and why.
    Reply(Vec<u8>, &'static str),
    /// Not answerable: shorter than a header, or itself a response.
    Ignore,
}

/// Parses a request. Never panics, whatever the bytes.
pub fn parse_request(raw: &[u8]) -> Parsed {
    if raw.len() < 12 || raw[2] & 0x80 != 0 {
        return Parsed::Ignore;
    }
    let req = match Message::from_vec(raw) {
        Ok(m) => m,
        Err(_) => return formerr_raw(raw).map_or(Parsed::Ignore, |b| Parsed::Reply(b, "unparseable")),
    };
    let reply = |rcode, why| match header_reply(&req, rcode).to_vec() {
        Ok(b) => Parsed::Reply(b, why),
        Err(_) => Parsed::Ignore,
    };
    if req.metadata.message_type != MessageType::Query {
        return Parsed::Ignore;
    }
    if req.metadata.op_code != OpCode::Query {
        return reply(ResponseCode::NotImp, "opcode");
    }
    // RFC 9619: exactly one question.
    if req.queries.len() != 1 {
        return reply(ResponseCode::FormErr, "qdcount");
    }
    if matches!(req.queries[0].query_type(), RecordType::AXFR | RecordType::IXFR) {
        return reply(ResponseCode::Refused, "zone-transfer");
    }
    // RFC 6891 §6.1.3: an EDNS version we do not implement gets BADVERS,
    // carried in our own OPT (version 0), as CoreDNS and the XDP layer answer.
    if req.edns.as_ref().is_some_and(|e| e.version() > 0) {
        let m = header_reply(&req, ResponseCode::BADVERS);
        return match m.to_vec() {
            Ok(b) => Parsed::Reply(b, "edns-version"),
            Err(_) => Parsed::Ignore,
        };
    }
    match ClientQuery::from_request(&req) {
        Some(c) => Parsed::Query(c),
        None => reply(ResponseCode::FormErr, "qdcount"),
    }
}

/// Everything a query needs, shared by the UDP and TCP listeners.
pub struct Handler {
    pub upstreams: Arc<Upstreams>,
    /// Check 6; `None` with `proxy.dnssec: off`.
    pub validator: Option<Arc<Validator>>,
    pub index: SharedRuleIndex,
    pub tel: Arc<Telemetry>,
    pub rebinding: RebindingConfig,
    pub dnssec: DnssecMode,
    /// The random-subdomain defence: fed with failed lookups, consulted
    /// before forwarding.
    pub dynblocks: Arc<DynBlocks>,
    /// `xdp.action: log`: check 8 and the random-subdomain block log (and
    /// check 8 counts) what they would block, then forward, so a dry run is
    /// a dry run through both layers.
    pub block_dry_run: bool,
    /// `proxy.query_timeout_ms`: one client query, whole. Without it a few
    /// hundred queries a second for names whose servers never answer
    /// would hold every in-flight slot for attempts × timeout each.
    pub query_timeout: Duration,
}

/// The reply and its verdict line, before encoding.
struct Outcome {
    reply: Message,
    verdict: Verdict,
    label: &'static str,
    upstream: String,
}

impl Handler {
    /// A block not carried out (a dry run): its line, with action `log` as
    /// the kernel writes it, counted as `dry-run` (the query is counted
    /// again under what then happens to it); the query goes on.
    fn dry_run(&self, out: Outcome) {
        let mut v = out.verdict;
        v.action = "log".into();
        self.tel.emit(v, "dry-run", &out.upstream);
    }

    /// The EDE text of a query that ran out of its budget.
    fn timeout_text(&self) -> String {
        format!("no answer within proxy.query_timeout_ms ({} ms)", self.query_timeout.as_millis())
    }

    fn rules(&self) -> Option<Arc<RuleSet>> {
        let ix = self.index.read().unwrap_or_else(|p| p.into_inner());
        ix.as_ref().map(|i| Arc::clone(&i.rules))
    }

    /// Bytes to send back, or `None` for silence.
    pub async fn handle(&self, raw: &[u8], client: SocketAddr, transport: Transport) -> Option<Vec<u8>> {
        let started = Instant::now();
        let cq = match parse_request(raw) {
            Parsed::Query(c) => c,
            Parsed::Reply(bytes, why) => {
                // The action names the rcode actually sent back.
                let (action, rcode) = match why {
                    "opcode" => ("notimp", "NOTIMP"),
                    "zone-transfer" => ("refused", "REFUSED"),
                    "edns-version" => ("badvers", "BADVERS"),
                    _ => ("formerr", "FORMERR"),
                };
                let mut v = Verdict::new("proxy", "malformed", action, why);
                v.rcode = Some(rcode.into());
                v.client = Some(client.ip());
                v.client_port = Some(client.port());
                self.tel.emit(v, "malformed", "");
                return Some(bytes);
            }
            Parsed::Ignore => return None,
        };
        let deadline = tokio::time::Instant::now() + self.query_timeout;
        let Outcome { reply, mut verdict, mut label, upstream } =
            QUERY_DEADLINE.scope(deadline, self.resolve(&cq, client, deadline)).await;
        let mut rcode = reply.metadata.response_code;
        let bytes = wire_reply(&reply, &cq, transport).unwrap_or_else(|servfail| {
            (verdict.verdict, verdict.action, verdict.reason) =
                ("servfail".into(), "servfail".into(), "unencodable".into());
            (label, rcode) = ("servfail", ResponseCode::ServFail);
            servfail
        });
        verdict.rcode = Some(rcode_name(rcode));
        verdict.latency_ms = Some((started.elapsed().as_secs_f64() * 1e4).round() / 10.0);
        self.tel.emit(verdict, label, &upstream);
        (!bytes.is_empty()).then_some(bytes)
    }

    async fn resolve(&self, cq: &ClientQuery, client: SocketAddr, deadline: tokio::time::Instant) -> Outcome {
        let qname = dotted(cq.query.name());
        let qtype = qtype_name(u16::from(cq.query.query_type()));
        // The verdict log's `dnssec`, once check 6 has run.
        let dnssec = OnceLock::new();
        let line = |verdict: &'static str, action: &str, reason: &str| {
            let mut v = Verdict::new("proxy", verdict, action, reason);
            v.client = Some(client.ip());
            v.client_port = Some(client.port());
            v.qname = Some(qname.clone());
            v.qtype = Some(qtype.clone());
            v.dnssec = Some(dnssec.get().copied().unwrap_or("off").into());
            v
        };
        let blocked = |m: &RuleMatch, reason: &str, upstream: Option<&str>| {
            let mut v = line("block", "nxdomain", reason);
            v.rule = Some(m.rule_text());
            v.list = Some(m.list_line());
            v.upstream = upstream.map(str::to_string);
            let ede = Ede::new(EDE_BLOCKED, format!("blocked by {}", m.rule_text()));
            Outcome {
                reply: local_reply(cq, ResponseCode::NXDomain, Some(&ede)),
                verdict: v,
                label: "block",
                upstream: upstream.unwrap_or_default().to_string(),
            }
        };
        let rules = self.rules();

        // Check 8, early: a blocked qname is never sent upstream at all.
        let listed = rules.as_ref().and_then(|r| r.matches(&qname));
        if let Some(m) = listed.as_ref().filter(|m| m.kind == MatchKind::Block) {
            let out = blocked(m, "blocklist", None);
            if !self.block_dry_run {
                return out;
            }
            self.dry_run(out);
        }
        let allowlisted = listed.is_some_and(|m| m.kind == MatchKind::Allow);
        let zone_allowlisted = |zone: &str| {
            rules.as_ref().and_then(|r| r.matches(zone)).is_some_and(|m| m.kind == MatchKind::Allow)
        };

        // A subdomain of a zone under a random-subdomain flood is not sent
        // upstream either (the XDP layer stops most of these already; TCP
        // clients and proxy-only mode end up here).
        if let Some(zone) = self.dynblocks.blocked_zone(&qname).filter(|_| !allowlisted) {
            // A dry run (`xdp.action: log`) wins here too, as in the kernel.
            let action = if self.block_dry_run { DynBlockAction::Log } else { self.dynblocks.action() };
            // REFUSED also for `drop`: this client is CoreDNS, which would
            // retry a silence and keep the flood going. The line's action
            // names what was sent.
            let (rcode, sent) = match action {
                DynBlockAction::Log => (ResponseCode::NoError, "log"),
                DynBlockAction::Nxdomain => (ResponseCode::NXDomain, "nxdomain"),
                _ => (ResponseCode::Refused, "refused"),
            };
            let mut v = line("block", sent, "random-subdomain");
            v.rule = Some(format!("*.{zone}"));
            v.list = Some("random-subdomain".into());
            if action == DynBlockAction::Log {
                self.tel.emit(v, "dry-run", ""); // logged, then forwarded
            } else {
                let ede = Ede::new(EDE_BLOCKED, format!("random-subdomain flood on {zone}"));
                return Outcome { reply: local_reply(cq, rcode, Some(&ede)), verdict: v, label: "block", upstream: String::new() };
            }
        }

        let ctx = QueryCtx { client: Some(client), qname: Some(qname.clone()), qtype: Some(qtype.clone()) };
        let validating = self.dnssec == DnssecMode::Validate;
        let dnssec_ok = cq.dnssec_ok || validating;
        // CD when we validate: a validating upstream would SERVFAIL bogus
        // data, leaving nothing to judge and no EDE 6 to give.
        let answer = match self.upstreams.forward(&cq.query, cq.cd || validating, dnssec_ok, &ctx).await {
            Ok(a) => a,
            Err(e) => {
                if let Some(zone) = failure_zone(&qname, None) {
                    self.dynblocks.note_failure(&zone, zone_allowlisted);
                }
                let (reason, code, text) = match e.source {
                    ExchangeError::Unreadable => ("unreadable-answer", EDE_OTHER, e.to_string()),
                    _ if out_of_time(deadline) => ("query-timeout", EDE_NO_REACHABLE_AUTHORITY, self.timeout_text()),
                    _ => ("all-upstreams-failed", EDE_NO_REACHABLE_AUTHORITY, e.to_string()),
                };
                let mut v = line("servfail", "servfail", reason);
                v.upstream = Some(e.upstream.clone());
                debug!(qname = %qname, error = %e, "no upstream answered");
                let ede = Ede::new(code, text);
                return Outcome {
                    reply: local_reply(cq, ResponseCode::ServFail, Some(&ede)),
                    verdict: v,
                    label: "servfail",
                    upstream: e.upstream,
                };
            }
        };
        let up = answer.upstream.clone();
        match answer.msg.metadata.response_code {
            ResponseCode::NXDomain | ResponseCode::ServFail if self.dynblocks.enabled() => {
                let soa = answer.msg.authorities.iter().find(|r| matches!(r.data, RData::SOA(_))).map(|r| dotted(&r.name));
                if let Some(zone) = failure_zone(&qname, soa.as_deref()) {
                    self.dynblocks.note_failure(&zone, zone_allowlisted);
                }
            }
            _ => {}
        }
        let with_up = |mut v: Verdict| {
            v.upstream = Some(up.clone());
            v
        };

        if answer.differing {
            // Hold-On: two acceptable but different answers mean someone on
            // the path raced the upstream. Which one is real cannot be told
            // from here, so neither reaches the cache.
            return Outcome {
                reply: local_reply(cq, ResponseCode::ServFail, None),
                verdict: with_up(line("spoof", "servfail", "differing-answers")),
                label: "spoof",
                upstream: up,
            };
        }

        let mut msg = answer.msg;
        // RFC 1035 §4.1.1: only NOERROR and NXDOMAIN carry data. Records on
        // any other rcode are dropped, since check 6 does not judge them. An
        // extended rcode (RFC 6891 §6.1.3) is about our EDNS exchange with the
        // upstream. The client would read only its low four bits, and could
        // take them for NOERROR, so it becomes SERVFAIL.
        let rcode = msg.metadata.response_code;
        let extended = u16::from(rcode) > 0xF;
        if !matches!(rcode, ResponseCode::NoError | ResponseCode::NXDomain) {
            if extended {
                debug!(qname = %qname, upstream = %up, rcode = u16::from(rcode), "extended rcode from upstream");
                msg.metadata.response_code = ResponseCode::ServFail;
            }
            msg.answers.clear();
            msg.authorities.clear();
            msg.additionals.clear();
        }
        // Check 6, on the answer as it came, apart from authority records
        // that speak for no zone of the answer's names (see
        // `scope_authority`). Check 5 comes after it, because the DNAME
        // behind a synthesized CNAME is outside the CNAME chain, and the
        // validator needs it.
        scope_authority(&answer.sent, &mut msg);
        let security = self.check_dnssec(cq, &answer.sent, &msg).await;
        if let Some(s) = &security {
            let _ = dnssec.set(s.label());
        }
        // A chain walk that could not fetch what it needed (or ran out of
        // the query's time) proved nothing: SERVFAIL as for any upstream
        // failure, not EDE 6, which would call the zone's data bogus.
        if let Some(Security::Indeterminate(detail)) = &security {
            let (reason, text) = if out_of_time(deadline) {
                ("query-timeout", self.timeout_text())
            } else {
                ("validation-unreachable", format!("DNSSEC records unreachable: {detail}"))
            };
            debug!(qname = %qname, upstream = %up, %detail, "DNSSEC indeterminate");
            // A lookup that failed here; an NXDOMAIN was counted above.
            if rcode == ResponseCode::NoError {
                if let Some(zone) = failure_zone(&qname, None) {
                    self.dynblocks.note_failure(&zone, zone_allowlisted);
                }
            }
            return Outcome {
                reply: local_reply(cq, ResponseCode::ServFail, Some(&Ede::new(EDE_NO_REACHABLE_AUTHORITY, text))),
                verdict: with_up(line("servfail", "servfail", reason)),
                label: "servfail",
                upstream: up,
            };
        }
        if let Some(Security::Bogus(b)) = &security {
            debug!(qname = %qname, upstream = %up, reason = b.reason, detail = %b.detail, "DNSSEC bogus");
            let ede = Ede::new(EDE_DNSSEC_BOGUS, b.detail.clone());
            return Outcome {
                reply: local_reply(cq, ResponseCode::ServFail, Some(&ede)),
                verdict: with_up(line("bogus", "servfail", b.reason)),
                label: "bogus",
                upstream: up,
            };
        }
        let secure = security == Some(Security::Secure);

        // Check 5. Authenticated answer and authority records cannot be a
        // forgery, and downstream validators need the proofs among them,
        // so a secure answer keeps those sections whole.
        let kept = secure.then(|| (msg.answers.clone(), msg.authorities.clone()));
        let scrubbed = scrub_bailiwick(&answer.sent, &mut msg);
        if let Some((answers, authorities)) = kept {
            msg.answers = answers;
            msg.authorities = authorities;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as u32);
            for section in [&mut msg.answers, &mut msg.authorities, &mut msg.additionals] {
                cap_authenticated_ttls(section, now);
            }
            dname::cap_synthesized_ttls(&mut msg.answers);
        }
        if scrubbed > 0 {
            debug!(qname = %qname, upstream = %up, scrubbed, "removed out-of-bailiwick records");
        }

        // Check 7.
        if let Some(hit) = check_rebinding(&qname, &msg, self.rebinding.block, &self.rebinding.allow) {
            let reason = if hit.metadata { "metadata-address" } else { "private-address" };
            let mut v = with_up(line("rebind", "empty", reason));
            v.rule = Some(hit.range.to_string());
            let ede = Ede::new(EDE_BLOCKED, format!("rebinding: {} is in {}", hit.addr, hit.range));
            return Outcome { reply: local_reply(cq, ResponseCode::NoError, Some(&ede)), verdict: v, label: "rebind", upstream: up };
        }

        // Check 8, along the CNAME chain (CNAME cloaking).
        if let Some(rules) = &rules {
            let chain = answer_chain(&answer.sent, &msg);
            if let Some((_, m)) = check_blocklist(&chain[1..], rules) {
                let out = blocked(&m, "cname-cloaking", Some(&up));
                if !self.block_dry_run {
                    return out;
                }
                self.dry_run(out);
            }
        }

        let rcode = msg.metadata.response_code;
        let (label, v) = match rcode {
            ResponseCode::ServFail if extended => ("servfail", line("servfail", "forward", "extended-rcode")),
            ResponseCode::ServFail => ("servfail", line("servfail", "forward", "upstream-servfail")),
            // The upstream's own error, passed on: not an answer that is "ok".
            ResponseCode::Refused => ("allow", line("allow", "forward", "upstream-refused")),
            ResponseCode::NotImp => ("allow", line("allow", "forward", "upstream-notimp")),
            ResponseCode::FormErr => ("allow", line("allow", "forward", "upstream-formerr")),
            ResponseCode::NoError | ResponseCode::NXDomain => ("allow", line("allow", "forward", match answer.via {
                Via::Udp => "ok",
                Via::Tcp => "ok-tcp",
                Via::Tls => "ok-tls",
            })),
            _ => ("allow", line("allow", "forward", "upstream-error")),
        };
        let mut reply = forward_reply(cq, &answer.sent, msg, None);
        // RFC 6840 §5.7: AD for a client that signalled it understands it.
        reply.metadata.authentic_data = secure && (cq.dnssec_ok || cq.ad);
        Outcome { reply, verdict: with_up(v), label, upstream: up }
    }

    /// Check 6 (RFC 4035 §5): `None` when not validating: `dnssec: off`,
    /// a client that set CD (RFC 4035 §3.2.2: it validates itself), or an
    /// upstream error with nothing to validate.
    async fn check_dnssec(&self, cq: &ClientQuery, sent: &hickory_proto::rr::Name, msg: &Message) -> Option<Security> {
        let validator = self.validator.as_ref()?;
        if cq.cd || !matches!(msg.metadata.response_code, ResponseCode::NoError | ResponseCode::NXDomain) {
            return None;
        }
        let mut query = Query::query(sent.clone(), cq.query.query_type());
        query.set_query_class(cq.query.query_class());
        Some(validator.validate(&query, msg).await)
    }
}

fn out_of_time(deadline: tokio::time::Instant) -> bool {
    tokio::time::Instant::now() >= deadline
}

/// RCODE mnemonics as dig prints them.
pub fn rcode_name(r: ResponseCode) -> String {
    match r {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => format!("RCODE{}", u16::from(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::super::response::ede_of;
    use hickory_proto::op::{Edns, Query};
    use hickory_proto::rr::Name;
    use std::str::FromStr;

    fn query_bytes(qs: &[&str], op: OpCode) -> Vec<u8> {
        let mut m = Message::new(77, MessageType::Query, op);
        for q in qs {
            m.add_query(Query::query(Name::from_str(q).unwrap(), RecordType::A));
        }
        m.to_vec().unwrap()
    }

    fn rcode(b: &[u8]) -> ResponseCode {
        Message::from_vec(b).unwrap().metadata.response_code
    }

    /// No answer read from an upstream is known to reach this (hickory
    /// writes back what it read); a message it cannot emit is made here:
    /// questions past the 65,535 bytes a message can hold (hickory
    /// truncates records that do not fit, but not questions).
    #[test]
    fn an_answer_hickory_cannot_write_is_a_servfail_not_a_silence() {
        let mut q = Message::new(77, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(Name::from_str("www.example.com.").unwrap(), RecordType::A));
        q.set_edns(Edns::new());
        let Parsed::Query(cq) = parse_request(&q.to_vec().unwrap()) else { panic!() };
        let mut m = local_reply(&cq, ResponseCode::NoError, None);
        // 70 bytes each once the shared suffix is compressed.
        for i in 0..1000 {
            let long = Name::from_str(&format!("{i:063}.{0}.{0}.", "a".repeat(63))).unwrap();
            m.add_query(Query::query(long, RecordType::A));
        }
        assert!(m.to_vec().is_err());
        for transport in [Transport::Udp, Transport::Tcp] {
            let sent = Message::from_vec(&wire_reply(&m, &cq, transport).unwrap_err()).unwrap();
            assert_eq!((sent.metadata.id, sent.metadata.response_code), (77, ResponseCode::ServFail));
            assert_eq!(sent.queries, std::slice::from_ref(&cq.query));
            assert_eq!(ede_of(&sent), [(EDE_OTHER, "answer cannot be encoded".to_string())]);
        }
        let fine = local_reply(&cq, ResponseCode::NoError, None);
        assert_eq!(wire_reply(&fine, &cq, Transport::Tcp), Ok(fine.to_vec().unwrap()));
    }

    #[test]
    fn malformed_requests_get_formerr_or_silence() {
        assert!(matches!(parse_request(b""), Parsed::Ignore));
        assert!(matches!(parse_request(&[0; 11]), Parsed::Ignore));
        // Header says one question, none follows.
        let raw = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        let Parsed::Reply(b, why) = parse_request(&raw) else { panic!() };
        assert_eq!((rcode(&b), why), (ResponseCode::FormErr, "unparseable"));
        assert_eq!(&b[..2], &[0x12, 0x34]);
        // A label running off the end.
        let mut raw = query_bytes(&["www.example.com."], OpCode::Query);
        raw.truncate(20);
        assert!(matches!(parse_request(&raw), Parsed::Reply(_, "unparseable")));
    }

    #[test]
    fn only_single_question_queries_are_forwarded() {
        let Parsed::Reply(b, _) = parse_request(&query_bytes(&[], OpCode::Query)) else { panic!() };
        assert_eq!(rcode(&b), ResponseCode::FormErr);
        let Parsed::Reply(b, _) = parse_request(&query_bytes(&["a.example.", "b.example."], OpCode::Query)) else {
            panic!()
        };
        assert_eq!(rcode(&b), ResponseCode::FormErr);
        let Parsed::Reply(b, _) = parse_request(&query_bytes(&["a.example."], OpCode::Update)) else { panic!() };
        assert_eq!(rcode(&b), ResponseCode::NotImp);
        assert!(matches!(parse_request(&query_bytes(&["a.example."], OpCode::Query)), Parsed::Query(_)));
        // Responses are never answered.
        let mut r = query_bytes(&["a.example."], OpCode::Query);
        r[2] |= 0x80;
        assert!(matches!(parse_request(&r), Parsed::Ignore));
    }

    #[test]
    fn an_edns_version_above_0_gets_badvers_in_an_opt_of_version_0() {
        let mut m = Message::new(77, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_str("a.example.").unwrap(), RecordType::A));
        let mut e = Edns::new();
        e.set_version(1);
        m.set_edns(e);
        let Parsed::Reply(b, why) = parse_request(&m.to_vec().unwrap()) else { panic!() };
        assert_eq!(why, "edns-version");
        // Header RCODE 0, OPT extended RCODE 1: 16, BADVERS.
        assert_eq!(b[3] & 0x0F, 0);
        let reply = Message::from_vec(&b).unwrap();
        // 16 is BADVERS for OPT (hickory names it BADSIG, TSIG's 16).
        assert_eq!(u16::from(reply.metadata.response_code), 16);
        assert_eq!(reply.edns.as_ref().map(Edns::version), Some(0));
        assert_eq!(reply.metadata.id, 77);
        // Version 0 is forwarded as usual.
        let mut m = m.clone();
        m.set_edns(Edns::new());
        assert!(matches!(parse_request(&m.to_vec().unwrap()), Parsed::Query(_)));
    }

    /// RFC 6891 §7: a request with an OPT record gets one back, on the
    /// error replies composed from the header too, its DO bit echoed.
    #[test]
    fn error_replies_to_an_edns_request_carry_an_opt() {
        let with_edns = |qs: &[&str], op: OpCode, qtype: RecordType, do_bit: bool| {
            let mut m = Message::new(77, MessageType::Query, op);
            for q in qs {
                m.add_query(Query::query(Name::from_str(q).unwrap(), qtype));
            }
            let mut e = Edns::new();
            e.set_dnssec_ok(do_bit);
            m.set_edns(e);
            let Parsed::Reply(b, why) = parse_request(&m.to_vec().unwrap()) else { panic!() };
            (Message::from_vec(&b).unwrap(), why)
        };
        for (qs, op, qtype, want) in [
            (&["a.example."][..], OpCode::Update, RecordType::A, "opcode"),
            (&["a.example.", "b.example."][..], OpCode::Query, RecordType::A, "qdcount"),
            (&["a.example."][..], OpCode::Query, RecordType::AXFR, "zone-transfer"),
        ] {
            for do_bit in [false, true] {
                let (reply, why) = with_edns(qs, op, qtype, do_bit);
                assert_eq!(why, want);
                let e = reply.edns.as_ref().unwrap_or_else(|| panic!("{want}: no OPT"));
                assert_eq!((e.version(), e.max_payload(), e.flags().dnssec_ok), (0, 1232, do_bit), "{want}");
            }
        }
        // Without one, none.
        let Parsed::Reply(b, _) = parse_request(&query_bytes(&["a.example."], OpCode::Update)) else { panic!() };
        assert!(Message::from_vec(&b).unwrap().edns.is_none());
    }

    #[test]
    fn rcode_names() {
        assert_eq!(rcode_name(ResponseCode::NXDomain), "NXDOMAIN");
        assert_eq!(rcode_name(ResponseCode::BADCOOKIE), "RCODE23");
    }
}
