//! Entry points for the cargo-fuzz targets in `guard/fuzz`, and a seeded
//! mutation corpus so stable `cargo test` replays the same code paths on
//! a few hundred inputs (libFuzzer needs nightly; CI does not).

use std::{net::SocketAddr, sync::OnceLock};

use hickory_proto::{
    op::{Message, OpCode, Query},
    rr::{
        rdata::{A, AAAA, CNAME, NS, NULL},
        Name, RData, Record, RecordType,
    },
};

use super::{
    dname::{cap_synthesized_ttls, without_synthesized_cnames},
    checks::{
        answer_chain, check_blocklist, check_rebinding, dotted, expect, scope_authority, scrub_bailiwick, verify_response,
    },
    handler::{parse_request, Parsed},
    response::{encode_udp, forward_reply, local_reply, ClientQuery},
};
use crate::lists::{parse_str, ListKind, RuleSet};

/// Request handling up to (not including) the network: parse, then the
/// local replies. Must never panic.
pub fn fuzz_request(data: &[u8]) {
    if let Parsed::Query(cq) = parse_request(data) {
        let r = local_reply(&cq, hickory_proto::op::ResponseCode::NXDomain, None);
        let _ = encode_udp(&r, cq.udp_limit());
        let _ = dotted(cq.query.name());
    }
}

fn rules() -> &'static RuleSet {
    static RULES: OnceLock<RuleSet> = OnceLock::new();
    RULES.get_or_init(|| {
        let mut s = RuleSet::default();
        parse_str("||tracker.test^\n*.ads.test\nexact.test\n", "fuzz.txt".as_ref(), ListKind::Block, &mut s);
        s
    })
}

/// Response validation and everything after it: checks 1-4 against an
/// expectation taken from the input itself (so the fuzzer gets past the
/// txid), then checks 5, 7, 8 and the reply. Must never panic.
pub fn fuzz_response(data: &[u8]) {
    let server: SocketAddr = "127.0.0.1:53".parse().expect("literal");
    let query = Message::from_vec(data)
        .ok()
        .and_then(|m| m.queries.first().cloned())
        .unwrap_or_else(|| Query::query(Name::root(), RecordType::A));
    let id = match data {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 0,
    };
    let Ok(mut msg) = verify_response(&expect(server, id, &query), server, data) else { return };
    let sent = query.name().clone();
    let _ = without_synthesized_cnames(&query, &msg);
    cap_synthesized_ttls(&mut msg.answers);
    scope_authority(&sent, &mut msg);
    scrub_bailiwick(&sent, &mut msg);
    let qname = dotted(&sent);
    let _ = check_rebinding(&qname, &msg, true, &["cluster.local".to_string()]);
    let chain = answer_chain(&sent, &msg);
    let _ = check_blocklist(&chain, rules());
    let cq = ClientQuery { id: 1, query, rd: true, cd: false, ad: false, edns_payload: Some(1232), dnssec_ok: false };
    let reply = forward_reply(&cq, &sent, msg, None);
    let _ = encode_udp(&reply, 512);
}

/// Well-formed queries and responses the mutator starts from.
pub fn seeds() -> Vec<Vec<u8>> {
    let n = |s: &str| Name::from_ascii(s).expect("literal");
    let mut q = Message::new(0x1234, hickory_proto::op::MessageType::Query, OpCode::Query);
    q.add_query(Query::query(n("wWw.Example.COM."), RecordType::A));
    let mut r = Message::response(0x1234, OpCode::Query);
    r.add_query(Query::query(n("wWw.Example.COM."), RecordType::A));
    r.add_answer(Record::from_rdata(n("www.example.com."), 60, RData::CNAME(CNAME(n("x.tracker.test.")))));
    r.add_answer(Record::from_rdata(n("x.tracker.test."), 60, RData::A(A::new(10, 0, 0, 1))));
    r.add_answer(Record::from_rdata(n("x.tracker.test."), 60, RData::AAAA(AAAA::new(0, 0, 0, 0, 0, 0xffff, 0xa9fe, 0xa9fe))));
    // A DNAME (hickory-proto reads it as unknown bytes) and its synthesis.
    let dname = RData::Unknown { code: RecordType::DNAME, rdata: NULL::with(b"\x07tracker\x04test\x00".to_vec()) };
    r.add_answer(Record::from_rdata(n("old.example.com."), 60, dname));
    r.add_answer(Record::from_rdata(n("a.old.example.com."), 600, RData::CNAME(CNAME(n("a.tracker.test.")))));
    r.add_authority(Record::from_rdata(n("example.com."), 60, RData::NS(NS(n("ns.example.com.")))));
    r.add_additional(Record::from_rdata(n("ns.example.com."), 60, RData::A(A::new(192, 0, 2, 53))));
    r.add_additional(Record::from_rdata(n("evil.test."), 60, RData::A(A::new(192, 0, 2, 66))));
    let mut with_edns = q.clone();
    with_edns.set_edns(hickory_proto::op::Edns::new());
    [q, r, with_edns].iter().filter_map(|m| m.to_vec().ok()).collect()
}

/// `count` inputs: the seeds, then seeded mutations of them (bit flips,
/// byte overwrites, truncation, insertion, count-field edits), the same
/// every run.
pub fn corpus(count: usize, seed: u64) -> Vec<Vec<u8>> {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let seeds = seeds();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = seeds.clone();
    while out.len() < count {
        let mut d = seeds[rng.random_range(0..seeds.len())].clone();
        for _ in 0..rng.random_range(1..6) {
            if d.is_empty() {
                d.push(rng.random());
                continue;
            }
            let i = rng.random_range(0..d.len());
            match rng.random_range(0..6) {
                0 => d[i] ^= 1 << rng.random_range(0..8),
                1 => d[i] = rng.random(),
                2 => d.truncate(i),
                3 => d.insert(i, rng.random()),
                // Header counts (bytes 4..12) and compression pointers are
                // where parsers break.
                4 if d.len() > 12 => {
                    let at = 4 + rng.random_range(0..8);
                    d[at] = rng.random_range(0..4);
                }
                4 => d[i] = 0,
                _ => d[i] = 0xc0 | rng.random_range(0..4u8),
            }
            if d.len() > 4 && d.len() < 12 && rng.random_bool(0.5) {
                d.resize(12, 0);
            }
        }
        out.push(d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_corpus_replays_without_panics() {
        for d in corpus(400, 1) {
            fuzz_request(&d);
        }
    }

    #[test]
    fn response_corpus_replays_without_panics() {
        for d in corpus(400, 2) {
            fuzz_response(&d);
        }
    }

    #[test]
    fn seeds_reach_the_deep_paths() {
        // The response seed passes checks 1-4 against itself.
        let s = seeds();
        let r = Message::from_vec(&s[1]).unwrap();
        let server = "127.0.0.1:53".parse().unwrap();
        assert!(verify_response(&expect(server, r.metadata.id, &r.queries[0]), server, &s[1]).is_ok());
        // Its DNAME survives the wire, and the CNAME beside it is its synthesis.
        let mut answers = r.answers.clone();
        assert_eq!(cap_synthesized_ttls(&mut answers), 1);
        assert!(matches!(parse_request(&s[0]), Parsed::Query(_)));
    }
}
