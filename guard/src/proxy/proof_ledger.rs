//! A ledger of what hickory's validation cache holds, to refuse any RRset
//! that would be served another RRset's proof.
//!
//! hickory-net 0.26.3 caches the proof of every RRset it validates under
//! a 64-bit `DefaultHasher` (SipHash-1-3 with fixed, public keys) of the
//! query and the RRset with its RRSIGs, and compares only that hash and
//! the query on a lookup. Whoever can hand the validator two RRsets for one
//! query (a hostile upstream, or an on-path attacker answering the
//! proxy's queries) can find a pair with one key offline, in about 2^33
//! hashes (`examples/proof_key_collision.rs`), and have the proof of the
//! first served for the second: an unsigned address in an insecure zone
//! they own makes a forged address for a signed name pass as insecure.
//!
//! The ledger sees every message hickory is handed (`Exchange::send`),
//! computes the key hickory will compute for each RRset in it, and keeps
//! beside it a fingerprint of the RRset under this process's random
//! SipHash keys, which an attacker cannot aim at. One key with two
//! fingerprints is a collision: the message is refused before hickory
//! reads it. An honest pair has one chance in 2^64.
//!
//! The ledger must hold every key hickory's cache holds. Each ledger
//! belongs to one hickory handle, starts empty with it, and records a
//! superset of what the handle can cache; when it is full the validator
//! starts a new handle with a new ledger (`Validator::chain`), so neither
//! outgrows the other.

use std::{
    collections::{hash_map::DefaultHasher, HashMap},
    hash::{BuildHasher, Hash, Hasher, RandomState},
    sync::Mutex,
};

use hickory_proto::{
    dnssec::rdata::DNSSECRData,
    op::{Message, Query},
    rr::{Name, RData, Record, RecordType},
};

/// Keys one ledger holds before its handle is replaced: about 12 MiB
/// (hickory's own cache would grow to a million entries, each with a
/// query and a proof, so renewing also bounds hickory's memory).
pub const LEDGER_CAPACITY: usize = 1 << 18;

/// An RRset whose key hickory's cache holds for other data under the same
/// query (the RRset seen first is not kept, only its fingerprint).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {rtype} RRset at {owner} has the validation cache key of different data seen under the query for {qname}; refused")]
pub struct Collision {
    pub qname: Name,
    pub owner: Name,
    pub rtype: RecordType,
}

pub struct ProofLedger {
    /// This process's keys for the fingerprints.
    keys: RandomState,
    /// (hickory's key, the query's fingerprint) to the RRset's fingerprint.
    seen: Mutex<HashMap<(u64, u64), u64>>,
    capacity: usize,
}

impl ProofLedger {
    pub fn new() -> Self {
        Self::with_capacity(LEDGER_CAPACITY)
    }

    pub fn with_capacity(capacity: usize) -> Self {
        ProofLedger { keys: RandomState::new(), seen: Mutex::default(), capacity }
    }

    /// Records the RRsets of `msg`, hickory's answer to `query`, or, if the
    /// ledger holds the key of one of them for other data, records nothing
    /// and returns it.
    pub fn check(&self, query: &Query, msg: &Message) -> Result<(), Box<Collision>> {
        let query_print = self.keys.hash_one((query.name(), query.query_type(), query.query_class()));
        let mut entries = Vec::new();
        for section in [&msg.answers, &msg.authorities, &msg.additionals] {
            for (owner, rtype) in rrset_types(section) {
                let (records, rrsigs) = rrset(section, &owner, rtype);
                let mut tape = Tape::default();
                feed_key(&mut tape, query, &owner, rtype, &records, &rrsigs);
                let key = (tape.hash(DefaultHasher::new()), query_print);
                entries.push((key, tape.hash(self.keys.build_hasher()), owner, rtype));
            }
        }
        // Hashed above, unlocked; checked and recorded here in one go.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut fresh = Vec::with_capacity(entries.len());
        let mut collided = None;
        for (i, (key, print, _, _)) in entries.iter().enumerate() {
            // Held already, or by an RRset before it in this message.
            let held = seen.get(key).or_else(|| entries[..i].iter().find(|e| e.0 == *key).map(|e| &e.1));
            match held {
                Some(held) if held != print => {
                    collided = Some(i);
                    break;
                }
                Some(_) => {}
                None => fresh.push((*key, *print)),
            }
        }
        if let Some(i) = collided {
            let (_, _, owner, rtype) = entries.swap_remove(i);
            return Err(Box::new(Collision { qname: query.name().clone(), owner, rtype }));
        }
        seen.extend(fresh);
        Ok(())
    }

    /// Whether the ledger's handle should be replaced.
    pub fn is_full(&self) -> bool {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).len() >= self.capacity
    }
}

impl Default for ProofLedger {
    fn default() -> Self {
        Self::new()
    }
}

/// The RRsets hickory forms from one section (`verify_rrsets`): each
/// distinct owner (case-insensitive) and type of its records other than
/// RRSIGs. hickory skips some types in deeper sub-queries; recording them
/// all only adds keys it never caches.
fn rrset_types(section: &[Record]) -> Vec<(Name, RecordType)> {
    let mut types: Vec<(Name, RecordType)> = Vec::new();
    for r in section.iter().filter(|r| r.record_type() != RecordType::RRSIG) {
        if !types.iter().any(|(n, t)| *t == r.record_type() && *n == r.name) {
            types.push((r.name.clone(), r.record_type()));
        }
    }
    types
}

/// The records of one RRset and the RRSIGs over it, in section order, as
/// hickory partitions them.
fn rrset<'a>(section: &'a [Record], owner: &Name, rtype: RecordType) -> (Vec<&'a Record>, Vec<&'a Record>) {
    let records = section.iter().filter(|r| r.record_type() == rtype && r.name == *owner).collect();
    let rrsigs = section
        .iter()
        .filter(|r| match &r.data {
            RData::DNSSEC(DNSSECRData::RRSIG(sig)) => r.name == *owner && sig.input().type_covered == rtype,
            _ => false,
        })
        .collect();
    (records, rrsigs)
}

/// What hickory's cache key (`RrsetVerificationContext::key` in
/// hickory-net 0.26.3) hashes, written into `h`: the query's name, class
/// and type; the RRset's owner, class (always IN: `RecordSet::new`) and
/// type; then each record's owner, class and data, RRSIGs after the
/// records. TTLs are left out. This follows hickory-net =0.26.3 (pinned in
/// Cargo.toml); the tests pin it to hickory's own key for the fixture's
/// one-record RRsets.
fn feed_key<H: Hasher>(h: &mut H, query: &Query, owner: &Name, rtype: RecordType, records: &[&Record], rrsigs: &[&Record]) {
    query.name().hash(h);
    query.query_class().hash(h);
    query.query_type().hash(h);
    owner.hash(h);
    hickory_proto::rr::DNSClass::IN.hash(h);
    rtype.hash(h);
    for r in records.iter().chain(rrsigs) {
        r.name.hash(h);
        r.dns_class.hash(h);
        r.data.hash(h);
    }
}

/// The bytes the `Hash` impls write, kept. SipHash reads its input as one
/// stream however it is split, so one write of the tape gives the hash of
/// their many one-byte writes (names are hashed a byte at a time), at a
/// fraction of the cost, and serves both hashes.
#[derive(Default)]
struct Tape(Vec<u8>);

impl Hasher for Tape {
    fn write(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    fn finish(&self) -> u64 {
        unreachable!("a tape is hashed with Tape::hash")
    }
}

impl Tape {
    fn hash<H: Hasher>(&self, mut h: H) -> u64 {
        h.write(&self.0);
        h.finish()
    }
}

/// hickory's cache key of the RRset (`owner`, `rtype`) in `section` under
/// `query`, for the tests.
pub fn hickory_key(query: &Query, section: &[Record], owner: &Name, rtype: RecordType) -> u64 {
    let (records, rrsigs) = rrset(section, owner, rtype);
    let mut h = DefaultHasher::new();
    feed_key(&mut h, query, owner, rtype, &records, &rrsigs);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::positive_proof::tests::{a, n};

    /// `records` as the answer to `www.example. A`.
    fn answer(records: Vec<Record>) -> (Query, Message) {
        crate::proxy::positive_proof::tests::answer("www.example.", records, vec![])
    }

    #[test]
    fn honest_repeats_reorders_and_ttls_are_not_collisions() {
        let ledger = ProofLedger::new();
        let (q, first) = answer(vec![a("www.example.", 1), a("www.example.", 2)]);
        let mut upper = a("WWW.example.", 1);
        upper.ttl += 1000;
        let (_, again) = answer(vec![upper, a("www.example.", 2)]);
        let (_, reordered) = answer(vec![a("www.example.", 2), a("www.example.", 1)]);
        let (_, other) = answer(vec![a("www.example.", 3)]);
        for msg in [&first, &again, &reordered, &other, &first] {
            assert_eq!(ledger.check(&q, msg), Ok(()));
        }
        // One key per RRset: the order of records is part of hickory's key,
        // the owner's case and the TTL are not.
        assert_eq!(ledger.seen.lock().unwrap().len(), 3);
    }

    #[test]
    fn each_section_forms_its_own_rrsets_under_the_query() {
        let ledger = ProofLedger::with_capacity(4);
        let (q, mut msg) = answer(vec![a("www.example.", 1)]);
        msg.add_additional(a("www.example.", 1));
        msg.add_authority(a("ns.example.", 9));
        assert_eq!(ledger.check(&q, &msg), Ok(()));
        // The answer and the additional copy share one key and one print.
        assert_eq!(ledger.seen.lock().unwrap().len(), 2);
        assert!(!ledger.is_full());
        // The same RRset under another query is another entry.
        let other_query = Query::query(n("ns.example."), RecordType::A);
        assert_eq!(ledger.check(&other_query, &msg), Ok(()));
        assert!(ledger.is_full());
    }
}
