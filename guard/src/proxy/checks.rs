//! The checks every upstream response passes before anything in it reaches
//! CoreDNS's cache, in the order the RFCs give them, one function each.
//! Checks 1-4 decide whether a datagram is the answer at all (a failure is
//! a spoof candidate and the exchange keeps waiting); 5, 7 and 8 judge and
//! scrub an accepted answer. 6, DNSSEC, lives in `dnssec`.

use std::{
    net::{IpAddr, SocketAddr},
    sync::LazyLock,
};

use hickory_proto::{
    dnssec::rdata::DNSSECRData,
    op::{Header, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{rdata::svcb::SvcParamValue, Name, RData, Record, RecordType},
    serialize::binary::{BinDecodable, BinDecoder},
};
use ipnet::IpNet;

use crate::{
    dynblock::is_public_suffix,
    lists::{matcher::RuleMatch, RuleSet},
};

/// What a response must match: the query as it went on the wire.
#[derive(Debug, Clone)]
pub struct Expected {
    pub server: SocketAddr,
    pub id: u16,
    /// The question exactly as sent, 0x20 case included.
    pub query: Query,
    pub op_code: OpCode,
    /// Whether the case was randomized (0x20). Without it the case carries
    /// no secret, so an upstream that folds case is not taken for a forger.
    pub match_case: bool,
}

/// Why a datagram is not the answer to the pending query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    WrongSource,
    WrongTxid,
    WrongQuestion,
    /// The right name in the wrong case: a forger who guessed port and
    /// txid but not the 0x20 bits.
    CaseMismatch,
    /// QR clear or a different opcode.
    NotResponse,
    /// Right source and txid, but the message does not parse, nor does
    /// its question match.
    Malformed,
    /// Right source, txid, question and case, but a record past the
    /// question does not parse (hickory reads some types strictly, such as
    /// an empty RDATA). A forger would have had to guess port, txid and
    /// case bits to send it, so it is the upstream's own answer that we
    /// cannot read: a failed exchange, not a spoof.
    Unreadable,
    /// Right source and txid, QR set, an error rcode and no question: what
    /// a server says to a query it could not parse, or will not serve.
    /// Without a question RFC 5452 §4 cannot match it to ours, so it is no
    /// answer and does not end the wait for one (a forger who guessed port
    /// and txid, but not the 0x20 case, could have sent it); nor is it
    /// counted as a spoof, which would move an honest upstream to TCP.
    ErrorWithoutQuestion(ResponseCode),
}

impl Rejection {
    /// The `kind` label of `dns_guard_spoof_responses_total`.
    pub fn kind(self) -> &'static str {
        match self {
            Rejection::WrongSource => "wrong_source",
            Rejection::WrongTxid => "wrong_txid",
            Rejection::WrongQuestion => "wrong_question",
            Rejection::CaseMismatch => "case_mismatch",
            Rejection::NotResponse => "not_response",
            Rejection::Malformed => "malformed",
            Rejection::Unreadable => "unreadable",
            Rejection::ErrorWithoutQuestion(_) => "error_without_question",
        }
    }

    /// The verdict log's `reason` (kebab case like the other reasons).
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::WrongSource => "wrong-source",
            Rejection::WrongTxid => "wrong-txid",
            Rejection::WrongQuestion => "wrong-question",
            Rejection::CaseMismatch => "case-mismatch",
            Rejection::NotResponse => "not-response",
            Rejection::Malformed => "malformed",
            Rejection::Unreadable => "unreadable",
            Rejection::ErrorWithoutQuestion(_) => "error-without-question",
        }
    }
}

/// Runs checks 1-4 on one datagram; the parsed message if it is the answer.
pub fn verify_response(expected: &Expected, from: SocketAddr, raw: &[u8]) -> Result<Message, Rejection> {
    check_source(expected, from)?;
    check_txid(expected, raw)?;
    let msg = match Message::from_vec(raw) {
        Ok(m) => m,
        Err(_) => return Err(unparseable(expected, raw)),
    };
    let rcode = msg.metadata.response_code;
    if msg.queries.is_empty()
        && matches!(rcode, ResponseCode::FormErr | ResponseCode::ServFail | ResponseCode::NotImp | ResponseCode::Refused)
        && check_header(expected, &msg).is_ok()
    {
        return Err(Rejection::ErrorWithoutQuestion(rcode));
    }
    check_question(expected, &msg)?;
    check_header(expected, &msg)?;
    Ok(msg)
}

/// A datagram that passed checks 1-2 but does not parse: `Unreadable` when
/// its header and question alone pass checks 3-4, else `Malformed`.
fn unparseable(expected: &Expected, raw: &[u8]) -> Rejection {
    let mut decoder = BinDecoder::new(raw);
    let Ok(header) = Header::read(&mut decoder) else { return Rejection::Malformed };
    let Ok(query) = Query::read(&mut decoder) else { return Rejection::Malformed };
    let mut head = Message::new(header.metadata.id, header.metadata.message_type, header.metadata.op_code);
    head.add_query(query);
    let one_question = header.counts.queries == 1;
    match check_question(expected, &head).and_then(|()| check_header(expected, &head)) {
        Ok(()) if one_question => Rejection::Unreadable,
        _ => Rejection::Malformed,
    }
}

/// A datagram found `Unreadable` whose header has TC set: an answer cut at
/// the datagram's limit may end mid-record (RFC 2181 §9 lets a server cut
/// anywhere), so its header and question stand for it, and the caller
/// retries over TCP (RFC 7766 §5) instead of giving up on the upstream.
pub fn truncated_head(raw: &[u8]) -> Option<Message> {
    let mut decoder = BinDecoder::new(raw);
    let header = Header::read(&mut decoder).ok()?;
    if !header.metadata.truncation {
        return None;
    }
    let query = Query::read(&mut decoder).ok()?;
    let mut head = Message::new(header.metadata.id, header.metadata.message_type, header.metadata.op_code);
    head.metadata = header.metadata;
    head.add_query(query);
    Some(head)
}

/// Check 1. RFC 5452 §4.1: "the response [must] come from the same
/// address and port the query was sent to". Our socket is unconnected on
/// purpose, so datagrams from anyone reach us and can be counted.
pub fn check_source(expected: &Expected, from: SocketAddr) -> Result<(), Rejection> {
    // A v4 upstream may show up v4-mapped on a dual-stack socket.
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    if canon(from) == canon(expected.server) {
        Ok(())
    } else {
        Err(Rejection::WrongSource)
    }
}

/// Check 2. RFC 1035 §7.3: "the ID field of the response [must match]
/// the ID of the query"; RFC 5452 §4 makes the random 16-bit id half the
/// entropy a blind forger has to guess. Read from the raw bytes, before
/// parsing, so a flood of garbage costs two byte compares.
pub fn check_txid(expected: &Expected, raw: &[u8]) -> Result<(), Rejection> {
    match raw {
        [hi, lo, ..] if u16::from_be_bytes([*hi, *lo]) == expected.id => Ok(()),
        _ => Err(Rejection::WrongTxid),
    }
}

/// Check 3. RFC 5452 §4: the question section must match the query's;
/// draft-vixie-dnsext-dns0x20: byte for byte, case included, so the
/// randomized case adds one bit of entropy per letter of the qname.
pub fn check_question(expected: &Expected, msg: &Message) -> Result<(), Rejection> {
    let [q] = msg.queries.as_slice() else {
        return Err(Rejection::WrongQuestion);
    };
    let want = &expected.query;
    if q.query_type() != want.query_type()
        || q.query_class() != want.query_class()
        || !q.name().eq_ignore_root(want.name())
    {
        return Err(Rejection::WrongQuestion);
    }
    if expected.match_case && !q.name().eq_ignore_root_case(want.name()) {
        return Err(Rejection::CaseMismatch);
    }
    Ok(())
}

/// Check 4. RFC 1035 §4.1.1: a response has QR set and carries the
/// query's opcode; anything else is not an answer to our question.
pub fn check_header(expected: &Expected, msg: &Message) -> Result<(), Rejection> {
    if msg.metadata.message_type == MessageType::Response && msg.metadata.op_code == expected.op_code {
        Ok(())
    } else {
        Err(Rejection::NotResponse)
    }
}

/// The owner names the answer section legitimately speaks about: the
/// qname and every CNAME target reached from it, in chain order.
pub fn answer_chain(qname: &Name, msg: &Message) -> Vec<Name> {
    let mut chain = vec![qname.clone()];
    // Bounded: each step adds a distinct name, and there are only so many
    // records.
    for _ in 0..msg.answers.len() {
        let last = chain.last().expect("never empty").clone();
        let next = msg.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(c) if r.name.eq_ignore_root(&last) => Some(c.0.clone()),
            _ => None,
        });
        match next {
            Some(n) if !chain.iter().any(|c| c.eq_ignore_root(&n)) => chain.push(n),
            _ => break,
        }
    }
    chain
}

/// Check 5. Bailiwick scrubbing (RFC 2181 §5.4.1 ranks authority and
/// additional data below answers; Unbound's harden-glue drops what lies
/// outside the zone asked about). A forwarder does not know the zone cut,
/// so the zone is approximated from the names asked about:
/// - answer records must be owned by a name in the CNAME chain (an
///   unrelated A record smuggled into an answer is the Kaminsky payload);
/// - authority records must be in scope (`scope_authority`);
/// - additional records must be at or below the owner of a kept SOA, NS
///   or DS, or below the parent of a chain name unless that parent is a
///   public suffix (for `bank.com`, `com` would admit any `.com` name).
///
/// Returns how many records were removed.
pub fn scrub_bailiwick(qname: &Name, msg: &mut Message) -> usize {
    let chain = answer_chain(qname, msg);
    let before = msg.answers.len() + msg.authorities.len() + msg.additionals.len();
    msg.answers.retain(|r| chain.iter().any(|c| c.eq_ignore_root(&r.name)));
    retain_authority_in_scope(&chain, msg);
    // A TLD's NS in the authority section (a referral-shaped answer) would
    // otherwise admit any name under it: the public-suffix rule below
    // holds for the authority's owners too.
    let mut zones: Vec<Name> = msg
        .authorities
        .iter()
        .filter(|r| !matches!(r.record_type(), RecordType::NSEC | RecordType::NSEC3 | RecordType::RRSIG))
        .map(|r| r.name.clone())
        .filter(|z| !is_public_suffix(&dotted(z)))
        .collect();
    zones.extend(
        chain.iter().filter(|c| c.num_labels() > 1).map(Name::base_name).filter(|p| !is_public_suffix(&dotted(p))),
    );
    msg.additionals.retain(|r| zones.iter().any(|z| z.num_labels() > 0 && z.zone_of(&r.name)));
    before - (msg.answers.len() + msg.authorities.len() + msg.additionals.len())
}

/// Drops authority records that do not speak for the zone of a name the
/// answer is about (the qname and its CNAME targets). Kept:
/// - records owned by such a name or an ancestor of one: the SOA, NS or DS
///   of the zone that answered, and their RRSIGs;
/// - denial proofs, NSEC and NSEC3 records and the RRSIGs over them, whose
///   signer is such an ancestor and which lie inside the signer's zone
///   (their owners are hashes or neighbouring names, never ancestors).
///
/// Run before check 6 too: an unsigned SOA from some other, unsigned zone
/// would otherwise make a forged NXDOMAIN or NODATA for a signed name look
/// insecure (hickory 0.26.3 calls a response insecure when every authority
/// record is), and check 5 would then remove the evidence. Without it the
/// validator has to prove the name's zone insecure itself (RFC 4035 §5.2).
/// Returns how many records were removed.
pub fn scope_authority(qname: &Name, msg: &mut Message) -> usize {
    let chain = answer_chain(qname, msg);
    let before = msg.authorities.len();
    retain_authority_in_scope(&chain, msg);
    before - msg.authorities.len()
}

fn retain_authority_in_scope(chain: &[Name], msg: &mut Message) {
    let speaks_for_chain = |zone: &Name| chain.iter().any(|c| zone.zone_of(c));
    // (owner, type) of each denial RRset that a chain zone signed.
    let signed_proofs: Vec<(Name, RecordType)> = msg
        .authorities
        .iter()
        .filter_map(|r| match &r.data {
            RData::DNSSEC(DNSSECRData::RRSIG(sig)) => {
                let input = sig.input();
                let denial = matches!(input.type_covered, RecordType::NSEC | RecordType::NSEC3);
                let signer = &input.signer_name;
                (denial && speaks_for_chain(signer) && signer.zone_of(&r.name))
                    .then(|| (r.name.clone(), input.type_covered))
            }
            _ => None,
        })
        .collect();
    let signed_proof = |owner: &Name, rtype: RecordType| {
        signed_proofs.iter().any(|(n, t)| *t == rtype && n.eq_ignore_root(owner))
    };
    msg.authorities.retain(|r| {
        let covered = match &r.data {
            RData::DNSSEC(DNSSECRData::RRSIG(sig)) => sig.input().type_covered,
            _ => r.record_type(),
        };
        chain.iter().any(|c| r.name.zone_of(c))
            || (matches!(covered, RecordType::NSEC | RecordType::NSEC3) && signed_proof(&r.name, covered))
    });
}

/// A name in `allow` or below one (suffix match on labels).
pub fn in_allowed_zone(qname: &str, allow: &[String]) -> bool {
    let q = qname.strip_suffix('.').unwrap_or(qname).to_ascii_lowercase();
    allow.iter().any(|a| {
        let a = a.strip_suffix('.').unwrap_or(a);
        q == a || (q.len() > a.len() && q.ends_with(a) && q.as_bytes()[q.len() - a.len() - 1] == b'.')
    })
}

/// Why an address is refused in an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebindHit {
    pub addr: IpAddr,
    pub range: IpNet,
    /// A cloud metadata endpoint: refused even for allowed names.
    pub metadata: bool,
}

/// Cloud instance-metadata endpoints: the classic SSRF-through-DNS-rebind
/// target (AWS/GCP/Azure IMDS, ECS task metadata, Alibaba, AWS and GCP
/// IMDS over IPv6, Azure WireServer). Never handed out, whatever the allow list says.
const METADATA: &[&str] = &[
    "169.254.169.254/32",
    "169.254.170.2/32",
    "100.100.100.200/32",
    "168.63.129.16/32",
    "fd00:ec2::254/128",
    "fd20:ce::254/128",
];

/// Private, loopback, link-local, CGNAT and unspecified space (RFC 1918,
/// 1122, 3927, 6598, 4193, 4291): what DNS rebinding points a browser at.
const PRIVATE: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "::/128",
    "::1/128",
    "fe80::/10",
    "fc00::/7",
];

/// The prefixes above, parsed once: this runs for every address of every
/// answer (parsing them per call was 1.4 % of the proxy's CPU).
static METADATA_NETS: LazyLock<Vec<IpNet>> = LazyLock::new(|| parse_nets(METADATA));
static PRIVATE_NETS: LazyLock<Vec<IpNet>> = LazyLock::new(|| parse_nets(PRIVATE));

fn parse_nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().expect("static prefix")).collect()
}

/// Classifies one address. IPv4-mapped IPv6 (`::ffff:10.0.0.1`) is judged
/// as the IPv4 address it carries, as Unbound's `private-address` and
/// dnsmasq do, so the mapped form is no bypass.
pub fn rebind_range(addr: IpAddr, block_private: bool) -> Option<RebindHit> {
    let ip = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    };
    let contains = |n: &IpNet| n.contains(&ip);
    if let Some(range) = METADATA_NETS.iter().copied().find(contains) {
        return Some(RebindHit { addr, range, metadata: true });
    }
    if !block_private {
        return None;
    }
    PRIVATE_NETS.iter().copied().find(contains).map(|range| RebindHit { addr, range, metadata: false })
}

/// Addresses a record hands out: A, AAAA, and SVCB/HTTPS ip hints.
fn addresses(r: &Record) -> Vec<IpAddr> {
    let svcb = match &r.data {
        RData::A(a) => return vec![IpAddr::V4(a.0)],
        RData::AAAA(a) => return vec![IpAddr::V6(a.0)],
        RData::SVCB(s) => s,
        RData::HTTPS(h) => &h.0,
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for (_, v) in &svcb.svc_params {
        match v {
            SvcParamValue::Ipv4Hint(h) => out.extend(h.0.iter().map(|a| IpAddr::V4(a.0))),
            SvcParamValue::Ipv6Hint(h) => out.extend(h.0.iter().map(|a| IpAddr::V6(a.0))),
            _ => {}
        }
    }
    out
}

/// Check 7. DNS rebinding: a public name must not resolve into the
/// cluster's or the node's own address space. Names in `allow` (suffix
/// match) may, except to metadata endpoints. The first offending address.
///
/// Names under `arpa.` never may: a reverse zone answers PTR, not
/// addresses, and whoever has a block delegated (a free IPv6 tunnel's
/// /48 will do) can publish an A record under it. The default allow list
/// names the reverse zones, as issue 3 asks, so they exempt nothing here.
pub fn check_rebinding(qname: &str, msg: &Message, block_private: bool, allow: &[String]) -> Option<RebindHit> {
    let reverse = in_allowed_zone(qname, &["arpa".to_string()]);
    let private = block_private && (reverse || !in_allowed_zone(qname, allow));
    msg.answers
        .iter()
        .chain(&msg.additionals)
        .flat_map(addresses)
        .find_map(|a| rebind_range(a, private))
}

/// Check 8. The blocklist on the qname and every CNAME target (CNAME
/// cloaking: a first-party name aliased to a blocked tracker). The first
/// name in chain order that is blocked, with its rule.
pub fn check_blocklist(chain: &[Name], rules: &RuleSet) -> Option<(String, RuleMatch)> {
    chain.iter().find_map(|n| {
        let text = dotted(n);
        match rules.matches(&text) {
            Some(m) if m.kind == crate::lists::matcher::MatchKind::Block => Some((text, m)),
            _ => None,
        }
    })
}

/// A name as the verdict log writes it: lower case, no trailing dot, `.`
/// for the root.
pub fn dotted(n: &Name) -> String {
    if n.iter().next().is_none() {
        return ".".into();
    }
    let s = n.to_lowercase().to_ascii();
    match s.strip_suffix('.') {
        Some(t) => t.to_string(),
        None => s,
    }
}

/// Builds the expectation for `query` sent to `server` with `id`.
pub fn expect(server: SocketAddr, id: u16, query: &Query) -> Expected {
    Expected { server, id, query: query.clone(), op_code: OpCode::Query, match_case: true }
}


#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, SOA};
    use hickory_proto::rr::RecordType;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn query(n: &str) -> Query {
        Query::query(name(n), RecordType::A)
    }

    fn server() -> SocketAddr {
        "127.0.0.1:53".parse().unwrap()
    }

    fn response(id: u16, q: Query) -> Message {
        let mut m = Message::response(id, OpCode::Query);
        m.add_query(q);
        m
    }

    fn a(owner: &str, ip: &str) -> Record {
        Record::from_rdata(name(owner), 60, RData::A(A(ip.parse().unwrap())))
    }

    fn aaaa(owner: &str, ip: &str) -> Record {
        Record::from_rdata(name(owner), 60, RData::AAAA(AAAA(ip.parse().unwrap())))
    }

    fn cname(owner: &str, target: &str) -> Record {
        Record::from_rdata(name(owner), 60, RData::CNAME(CNAME(name(target))))
    }

    #[test]
    fn genuine_answer_passes_checks_1_to_4() {
        let q = query("wWw.ExAmple.COM.");
        let exp = expect(server(), 4242, &q);
        let raw = response(4242, q).to_vec().unwrap();
        assert!(verify_response(&exp, server(), &raw).is_ok());
    }

    #[test]
    fn forged_source_is_rejected_first() {
        let q = query("www.example.com.");
        let exp = expect(server(), 1, &q);
        let raw = response(1, q).to_vec().unwrap();
        let other_port: SocketAddr = "127.0.0.1:5300".parse().unwrap();
        let other_ip: SocketAddr = "127.0.0.2:53".parse().unwrap();
        assert_eq!(verify_response(&exp, other_port, &raw).unwrap_err(), Rejection::WrongSource);
        assert_eq!(verify_response(&exp, other_ip, &raw).unwrap_err(), Rejection::WrongSource);
        // v4-mapped form of the right address is the right address.
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:53".parse().unwrap();
        assert!(verify_response(&exp, mapped, &raw).is_ok());
    }

    #[test]
    fn forged_txid_is_rejected() {
        let q = query("www.example.com.");
        let exp = expect(server(), 1, &q);
        let raw = response(2, q).to_vec().unwrap();
        assert_eq!(verify_response(&exp, server(), &raw).unwrap_err(), Rejection::WrongTxid);
        assert_eq!(verify_response(&exp, server(), &[0]).unwrap_err(), Rejection::WrongTxid);
    }

    #[test]
    fn forged_question_is_rejected() {
        let exp = expect(server(), 7, &query("www.example.com."));
        let raw = response(7, query("www.evil.com.")).to_vec().unwrap();
        assert_eq!(verify_response(&exp, server(), &raw).unwrap_err(), Rejection::WrongQuestion);
        let mut other_type = query("www.example.com.");
        other_type.set_query_type(RecordType::AAAA);
        let raw = response(7, other_type).to_vec().unwrap();
        assert_eq!(verify_response(&exp, server(), &raw).unwrap_err(), Rejection::WrongQuestion);
        let mut none = response(7, query("www.example.com."));
        none.queries.clear();
        let raw = none.to_vec().unwrap();
        assert_eq!(verify_response(&exp, server(), &raw).unwrap_err(), Rejection::WrongQuestion);
    }

    #[test]
    fn wrong_0x20_case_is_a_case_mismatch() {
        let exp = expect(server(), 7, &query("wWw.ExAmple.COM."));
        let raw = response(7, query("www.example.com.")).to_vec().unwrap();
        assert_eq!(verify_response(&exp, server(), &raw).unwrap_err(), Rejection::CaseMismatch);
        // With 0x20 off for this upstream the case is no secret: any case is the answer.
        let exp = Expected { match_case: false, ..expect(server(), 7, &query("www.example.com.")) };
        let raw = response(7, query("WWW.Example.COM.")).to_vec().unwrap();
        assert!(verify_response(&exp, server(), &raw).is_ok());
    }

    #[test]
    fn a_query_is_not_a_response() {
        let q = query("www.example.com.");
        let exp = expect(server(), 7, &q);
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.add_query(q.clone());
        let raw = m.to_vec().unwrap();
        assert_eq!(verify_response(&exp, server(), &raw).unwrap_err(), Rejection::NotResponse);
        let mut m = Message::new(7, MessageType::Response, OpCode::Status);
        m.add_query(q);
        let raw = m.to_vec().unwrap();
        assert_eq!(verify_response(&exp, server(), &raw).unwrap_err(), Rejection::NotResponse);
    }

    #[test]
    fn garbage_after_a_good_txid_is_malformed() {
        let exp = expect(server(), 0x0102, &query("www.example.com."));
        let raw = [1, 2, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 63];
        assert_eq!(verify_response(&exp, server(), &raw).unwrap_err(), Rejection::Malformed);
    }

    #[test]
    fn bailiwick_scrub_drops_out_of_zone_records() {
        let q = name("www.example.com.");
        let mut m = response(1, Query::query(q.clone(), RecordType::A));
        m.add_answer(cname("www.example.com.", "cdn.example.net."));
        m.add_answer(a("cdn.example.net.", "192.0.2.1"));
        // Kaminsky payload: an unrelated name in the answer section.
        m.add_answer(a("www.bank.test.", "192.0.2.66"));
        m.add_authority(Record::from_rdata(name("example.net."), 60, RData::NS(NS(name("ns1.example.net.")))));
        m.add_authority(Record::from_rdata(name("bank.test."), 60, RData::NS(NS(name("ns.evil.test.")))));
        m.add_authority(Record::from_rdata(
            name("com."),
            60,
            RData::SOA(SOA::new(name("a.gtld.test."), name("x.test."), 1, 1, 1, 1, 1)),
        ));
        m.add_additional(a("ns1.example.net.", "192.0.2.53"));
        m.add_additional(a("ns.evil.test.", "192.0.2.66"));
        // The TLD's SOA stays, but admits no name under the TLD.
        m.add_additional(a("www.bank.com.", "192.0.2.66"));
        let removed = scrub_bailiwick(&q, &mut m);
        assert_eq!(removed, 4, "{m}");
        assert_eq!(m.answers.len(), 2);
        let auth: Vec<String> = m.authorities.iter().map(|r| r.name.to_string()).collect();
        assert_eq!(auth, ["example.net.", "com."]);
        let add: Vec<String> = m.additionals.iter().map(|r| r.name.to_string()).collect();
        assert_eq!(add, ["ns1.example.net."]);
    }

    fn soa(owner: &str) -> Record {
        Record::from_rdata(name(owner), 60, RData::SOA(SOA::new(name("ns.x.test."), name("h.x.test."), 1, 1, 1, 1, 1)))
    }

    fn nsec(owner: &str, next: &str) -> Record {
        use hickory_proto::dnssec::rdata::NSEC;
        Record::from_rdata(name(owner), 60, RData::DNSSEC(DNSSECRData::NSEC(NSEC::new(name(next), [RecordType::A]))))
    }

    fn rrsig(owner: &str, covered: RecordType, signer: &str) -> Record {
        use hickory_proto::dnssec::{
            rdata::{SigInput, RRSIG},
            Algorithm,
        };
        let input = SigInput {
            type_covered: covered,
            algorithm: Algorithm::ECDSAP256SHA256,
            num_labels: name(owner).num_labels(),
            original_ttl: 60,
            sig_expiration: 2_000_000_000u32.into(),
            sig_inception: 1_700_000_000u32.into(),
            key_tag: 1,
            signer_name: name(signer),
        };
        Record::from_rdata(name(owner), 60, RData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(input, vec![0; 64]))))
    }

    fn owners(records: &[Record]) -> Vec<String> {
        records.iter().map(|r| format!("{} {}", r.name, r.record_type())).collect()
    }

    /// The forged negative answer hickory 0.26.3 would call insecure: an
    /// unsigned SOA from some other zone is the only authority record.
    #[test]
    fn authority_from_another_zone_is_dropped_before_validation() {
        let q = name("www.bank.test.");
        let mut m = response(1, Query::query(q.clone(), RecordType::A));
        m.add_authority(soa("unsigned-elsewhere.test."));
        m.add_authority(rrsig("unsigned-elsewhere.test.", RecordType::SOA, "unsigned-elsewhere.test."));
        assert_eq!(scope_authority(&q, &mut m), 2);
        assert!(m.authorities.is_empty(), "{m}");
    }

    /// A real NXDOMAIN from a signed zone keeps its SOA and its NSEC proof:
    /// the NSEC owners are neighbours of the name, not ancestors, and are
    /// kept because the zone's apex signed them. A proof signed by some
    /// other zone is not.
    #[test]
    fn denial_proofs_signed_by_the_names_zone_are_kept() {
        let q = name("nope.bank.test.");
        let mut m = response(1, Query::query(q.clone(), RecordType::A));
        let kept = [
            soa("bank.test."),
            rrsig("bank.test.", RecordType::SOA, "bank.test."),
            nsec("mail.bank.test.", "www.bank.test."),
            rrsig("mail.bank.test.", RecordType::NSEC, "bank.test."),
            nsec("bank.test.", "mail.bank.test."),
            rrsig("bank.test.", RecordType::NSEC, "bank.test."),
        ];
        for r in &kept {
            m.add_authority(r.clone());
        }
        // Signed, but by a zone that is not an ancestor of the name.
        m.add_authority(nsec("a.evil.test.", "z.evil.test."));
        m.add_authority(rrsig("a.evil.test.", RecordType::NSEC, "evil.test."));
        // Claims the parent's signature but lies outside the signer's zone.
        m.add_authority(nsec("a.other.test.", "z.other.test."));
        m.add_authority(rrsig("a.other.test.", RecordType::NSEC, "bank.test."));
        // Unsigned: nothing vouches for it.
        m.add_authority(nsec("m.bank.test.", "n.bank.test."));
        let mut scrubbed = m.clone();
        assert_eq!(scope_authority(&q, &mut m), 5, "{m}");
        assert_eq!(owners(&m.authorities), owners(&kept));
        // Check 5 keeps the same proofs, for clients that validate
        // themselves (CD set, or DO with `dnssec: off`).
        scrub_bailiwick(&q, &mut scrubbed);
        assert_eq!(owners(&scrubbed.authorities), owners(&kept));
    }

    /// Only the SOA, NS or DS of a kept zone opens the additional section
    /// to names under it: an NSEC owner does not.
    #[test]
    fn denial_proof_owners_do_not_admit_additional_records() {
        let q = name("nope.sub.bank.test.");
        let mut m = response(1, Query::query(q.clone(), RecordType::A));
        m.add_authority(nsec("mail.bank.test.", "www.bank.test."));
        m.add_authority(rrsig("mail.bank.test.", RecordType::NSEC, "bank.test."));
        m.add_additional(a("x.mail.bank.test.", "192.0.2.1"));
        // Below the qname's parent: admitted as before.
        m.add_additional(a("ns.sub.bank.test.", "192.0.2.2"));
        scrub_bailiwick(&q, &mut m);
        assert_eq!(owners(&m.authorities).len(), 2);
        assert_eq!(owners(&m.additionals), ["ns.sub.bank.test. A"]);
    }

    /// For a name one label under a public suffix, its parent opens
    /// nothing: the zone's own NS in the authority section does.
    #[test]
    fn a_public_suffix_parent_admits_no_additional_records() {
        let q = name("bank.test.");
        let mut m = response(1, Query::query(q.clone(), RecordType::A));
        m.add_answer(a("bank.test.", "192.0.2.1"));
        m.add_authority(Record::from_rdata(name("bank.test."), 60, RData::NS(NS(name("ns1.bank.test.")))));
        m.add_additional(a("ns1.bank.test.", "192.0.2.53"));
        m.add_additional(a("www.victim.test.", "192.0.2.66"));
        scrub_bailiwick(&q, &mut m);
        assert_eq!(owners(&m.additionals), ["ns1.bank.test. A"]);
        // Deeper names keep their parent's zone: www.bank.test admits mail.bank.test.
        let q = name("www.bank.test.");
        let mut m = response(1, Query::query(q.clone(), RecordType::A));
        m.add_additional(a("mail.bank.test.", "192.0.2.25"));
        m.add_additional(a("www.victim.test.", "192.0.2.66"));
        scrub_bailiwick(&q, &mut m);
        assert_eq!(owners(&m.additionals), ["mail.bank.test. A"]);
    }

    #[test]
    fn only_an_error_rcode_without_a_question_is_told_apart_from_a_wrong_question() {
        let q = Query::query(name("wWw.ExAmple.com."), RecordType::A);
        let exp = expect(server(), 0x0102, &q);
        let without = |rcode| {
            let mut m = Message::error_msg(0x0102, OpCode::Query, rcode);
            m.metadata.message_type = MessageType::Response;
            verify_response(&exp, server(), &m.to_vec().unwrap()).unwrap_err()
        };
        for rcode in [ResponseCode::FormErr, ResponseCode::ServFail, ResponseCode::NotImp, ResponseCode::Refused] {
            assert_eq!(without(rcode), Rejection::ErrorWithoutQuestion(rcode));
        }
        // A denial without a question would be a forged negative answer
        // that skipped the question and 0x20 checks: still a spoof.
        assert_eq!(without(ResponseCode::NXDomain), Rejection::WrongQuestion);
        assert_eq!(without(ResponseCode::NoError), Rejection::WrongQuestion);
    }

    #[test]
    fn the_upstreams_own_unparseable_answer_is_unreadable_not_a_spoof() {
        let q = Query::query(name("wWw.ExAmple.com."), RecordType::A);
        let exp = expect(server(), 0x0102, &q);
        let mut m = response(0x0102, q.clone());
        m.add_answer(a("www.example.com.", "192.0.2.1"));
        let mut raw = m.to_vec().unwrap();
        // Claim a second answer record that is not there.
        raw[7] = 2;
        assert_eq!(verify_response(&exp, server(), &raw).unwrap_err(), Rejection::Unreadable);
        // The same bytes with the name in another case: a forger who
        // guessed port and txid but not the 0x20 bits. Still a spoof.
        let mut lower = response(0x0102, Query::query(name("www.example.com."), RecordType::A));
        lower.add_answer(a("www.example.com.", "192.0.2.1"));
        let mut raw = lower.to_vec().unwrap();
        raw[7] = 2;
        assert_eq!(verify_response(&exp, server(), &raw).unwrap_err(), Rejection::Malformed);
        // Another question altogether.
        let mut other = response(0x0102, Query::query(name("evil.test."), RecordType::A));
        other.add_answer(a("evil.test.", "192.0.2.66"));
        let mut raw = other.to_vec().unwrap();
        raw[7] = 2;
        assert_eq!(verify_response(&exp, server(), &raw).unwrap_err(), Rejection::Malformed);
    }

    #[test]
    fn answer_chain_follows_cnames_and_stops_on_loops() {
        let q = name("a.example.");
        let mut m = response(1, Query::query(q.clone(), RecordType::A));
        m.add_answer(cname("a.example.", "b.example."));
        m.add_answer(cname("B.example.", "c.example."));
        m.add_answer(cname("c.example.", "a.example."));
        let chain: Vec<String> = answer_chain(&q, &m).iter().map(|n| n.to_string()).collect();
        assert_eq!(chain, ["a.example.", "b.example.", "c.example."]);
    }

    #[test]
    fn rebinding_ranges() {
        let hit = |s: &str| rebind_range(s.parse().unwrap(), true).map(|h| (h.range.to_string(), h.metadata));
        assert_eq!(hit("10.1.2.3"), Some(("10.0.0.0/8".into(), false)));
        assert_eq!(hit("172.31.0.1"), Some(("172.16.0.0/12".into(), false)));
        assert_eq!(hit("192.168.1.1"), Some(("192.168.0.0/16".into(), false)));
        assert_eq!(hit("127.0.0.53"), Some(("127.0.0.0/8".into(), false)));
        assert_eq!(hit("100.64.0.1"), Some(("100.64.0.0/10".into(), false)));
        assert_eq!(hit("0.0.0.0"), Some(("0.0.0.0/8".into(), false)));
        assert_eq!(hit("169.254.1.1"), Some(("169.254.0.0/16".into(), false)));
        assert_eq!(hit("::1"), Some(("::1/128".into(), false)));
        assert_eq!(hit("::"), Some(("::/128".into(), false)));
        assert_eq!(hit("fe80::1"), Some(("fe80::/10".into(), false)));
        assert_eq!(hit("fd12:3456::1"), Some(("fc00::/7".into(), false)));
        assert_eq!(hit("::ffff:10.0.0.1"), Some(("10.0.0.0/8".into(), false)));
        assert_eq!(hit("169.254.169.254"), Some(("169.254.169.254/32".into(), true)));
        assert_eq!(hit("::ffff:169.254.169.254"), Some(("169.254.169.254/32".into(), true)));
        assert_eq!(hit("fd00:ec2::254"), Some(("fd00:ec2::254/128".into(), true)));
        assert_eq!(hit("fd20:ce::254"), Some(("fd20:ce::254/128".into(), true)));
        assert_eq!(hit("8.8.8.8"), None);
        assert_eq!(hit("::ffff:8.8.8.8"), None);
        assert_eq!(hit("2001:db8::1"), None);
        assert_eq!(hit("172.32.0.1"), None);
        // With private blocking off, metadata stays protected.
        assert!(rebind_range("10.0.0.1".parse().unwrap(), false).is_none());
        assert!(rebind_range("169.254.169.254".parse().unwrap(), false).unwrap().metadata);
    }

    fn allow() -> Vec<String> {
        vec!["cluster.local".into(), "in-addr.arpa".into(), "ip6.arpa".into()]
    }

    #[test]
    fn rebinding_respects_the_allow_list_but_not_for_metadata() {
        let mut m = response(1, query("svc.ns.svc.cluster.local."));
        m.add_answer(a("svc.ns.svc.cluster.local.", "10.96.0.10"));
        assert_eq!(check_rebinding("svc.ns.svc.cluster.local", &m, true, &allow()), None);
        assert!(check_rebinding("evil.example", &m, true, &allow()).is_some());
        assert!(check_rebinding("notcluster.local", &m, true, &allow()).is_some());
        let mut m = response(1, query("svc.cluster.local."));
        m.add_answer(a("svc.cluster.local.", "169.254.169.254"));
        let hit = check_rebinding("svc.cluster.local", &m, true, &allow()).unwrap();
        assert!(hit.metadata);
        assert!(in_allowed_zone("Cluster.Local.", &allow()));
        assert!(!in_allowed_zone("xcluster.local", &allow()));
    }

    /// An attacker with a reverse delegation publishes an address under
    /// it: the default allow list's reverse zones do not let it through.
    #[test]
    fn an_address_under_a_reverse_zone_is_rebinding_whatever_the_allow_list() {
        let name = "x.8.b.d.0.1.0.0.2.ip6.arpa.";
        let mut m = response(1, query(name));
        m.add_answer(a(name, "10.96.0.1"));
        let hit = check_rebinding(name, &m, true, &allow()).expect("blocked");
        assert!(!hit.metadata);
        assert!(check_rebinding("1.0.0.10.in-addr.arpa", &m, true, &allow()).is_some());
        // Off is off.
        assert_eq!(check_rebinding(name, &m, false, &allow()), None);
    }

    #[test]
    fn rebinding_sees_aaaa_mapped_and_svcb_hints() {
        let mut m = response(1, query("evil.example."));
        m.add_answer(aaaa("evil.example.", "::ffff:10.0.0.1"));
        let hit = check_rebinding("evil.example", &m, true, &allow()).unwrap();
        assert_eq!(hit.addr, "::ffff:10.0.0.1".parse::<IpAddr>().unwrap());

        use hickory_proto::rr::rdata::{
            svcb::{IpHint, SvcParamKey, SVCB},
            HTTPS,
        };
        let svcb = SVCB::new(
            1,
            name("."),
            vec![(SvcParamKey::Ipv4Hint, SvcParamValue::Ipv4Hint(IpHint(vec![A("192.168.0.9".parse().unwrap())])))],
        );
        let mut m = response(1, query("evil.example."));
        m.add_answer(Record::from_rdata(name("evil.example."), 60, RData::HTTPS(HTTPS(svcb))));
        let hit = check_rebinding("evil.example", &m, true, &allow()).unwrap();
        assert_eq!(hit.range.to_string(), "192.168.0.0/16");
    }

    #[test]
    fn cname_cloaking_is_caught_along_the_chain() {
        let mut rules = RuleSet::default();
        crate::lists::parse_str(
            "||tracker.test^\n",
            std::path::Path::new("b.txt"),
            crate::lists::ListKind::Block,
            &mut rules,
        );
        let q = name("metrics.shop.example.");
        let mut m = response(1, Query::query(q.clone(), RecordType::A));
        m.add_answer(cname("metrics.shop.example.", "shop.eu.tracker.test."));
        m.add_answer(a("shop.eu.tracker.test.", "192.0.2.1"));
        let chain = answer_chain(&q, &m);
        let (hit, rule) = check_blocklist(&chain, &rules).unwrap();
        assert_eq!(hit, "shop.eu.tracker.test");
        assert_eq!(rule.rule_text(), "||tracker.test^");
        assert!(check_blocklist(&chain[..1], &rules).is_none());
    }

    #[test]
    fn dotted_names() {
        assert_eq!(dotted(&name("WWW.Example.")), "www.example");
        assert_eq!(dotted(&Name::root()), ".");
    }
}
