//! Answers signed here with real P-256 keys: the shortcut must accept the
//! shapes it is for, remember their signatures, and decline every forgery
//! or shape it does not prove (hickory's full validation then judges).

use std::{net::Ipv4Addr, str::FromStr, time::Duration};

use hickory_proto::{
    dnssec::{
        crypto::EcdsaSigningKey,
        rdata::{SigInput, NSEC, NSEC3},
        Algorithm, DnssecSigner, SigningKey,
    },
    op::Message,
    rr::rdata::{A, CNAME, NS, NULL},
};

use super::*;

const NOW: u32 = 1_800_000_000;
const TTL: u32 = 300;

pub(in crate::proxy) fn n(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

/// A zone with one P-256 key (flags 257).
pub(in crate::proxy) struct Zone {
    pub name: Name,
    signer: DnssecSigner,
}

impl Zone {
    pub fn new(name: &str) -> Self {
        Self::with_flags(name, 257)
    }

    pub fn with_flags(name: &str, flags: u16) -> Self {
        let pkcs8 = EcdsaSigningKey::generate_pkcs8(Algorithm::ECDSAP256SHA256).unwrap();
        let key = EcdsaSigningKey::from_pkcs8(&pkcs8, Algorithm::ECDSAP256SHA256).unwrap();
        let dnskey = DNSKEY::with_flags(flags, key.to_public_key().unwrap());
        let signer = DnssecSigner::new(dnskey, Box::new(key), n(name), Duration::from_secs(86400));
        Zone { name: n(name), signer }
    }

    pub fn keys(&self) -> Vec<DNSKEY> {
        vec![self.signer.dnskey().clone()]
    }

    /// An RRSIG over `rrset` (one owner and type), valid around `NOW`;
    /// `labels` below the owner's count signs it as a wildcard expansion.
    pub fn sign_with(&self, rrset: &[Record], labels: u8, inception: u32, expiration: u32) -> Record {
        let first = &rrset[0];
        let input = SigInput {
            type_covered: first.record_type(),
            algorithm: Algorithm::ECDSAP256SHA256,
            num_labels: labels,
            original_ttl: TTL,
            sig_expiration: SerialNumber::new(expiration),
            sig_inception: SerialNumber::new(inception),
            key_tag: self.signer.calculate_key_tag().unwrap(),
            signer_name: self.name.clone(),
        };
        let tbs = TBS::from_input(&first.name, DNSClass::IN, &input, rrset.iter()).unwrap();
        let sig = self.signer.sign(&tbs).unwrap();
        Record::from_rdata(first.name.clone(), TTL, RData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(input, sig))))
    }

    fn sign(&self, rrset: &[Record]) -> Record {
        self.sign_with(rrset, rrset[0].name.num_labels(), NOW - 3600, NOW + 3600)
    }

    fn nsec3_hash(&self, name: &Name) -> Vec<u8> {
        Nsec3HashAlgorithm::SHA1.hash(b"\xab", name, 1).unwrap().as_ref().to_vec()
    }

    /// The NSEC3 chain of `names` (salt ab, one iteration), signed.
    fn nsec3_chain(&self, names: &[&str]) -> Vec<(Vec<u8>, Vec<Record>)> {
        let mut hashes: Vec<Vec<u8>> = names.iter().map(|s| self.nsec3_hash(&n(s))).collect();
        hashes.sort();
        (0..hashes.len())
            .map(|i| {
                let next = hashes[(i + 1) % hashes.len()].clone();
                let owner = Name::from_str(&BASE32_DNSSEC.encode(&hashes[i])).unwrap().append_domain(&self.name).unwrap();
                let nsec3 = NSEC3::new(Nsec3HashAlgorithm::SHA1, false, 1, vec![0xab], next, [RecordType::A, RecordType::RRSIG]);
                let rec = Record::from_rdata(owner, TTL, RData::DNSSEC(DNSSECRData::NSEC3(nsec3)));
                let sig = self.sign(std::slice::from_ref(&rec));
                (hashes[i].clone(), vec![rec, sig])
            })
            .collect()
    }

    /// The signed NSEC3 that covers `name`'s hash.
    fn covering_nsec3(&self, chain: &[(Vec<u8>, Vec<Record>)], name: &str) -> Vec<Record> {
        let h = self.nsec3_hash(&n(name));
        let i = chain.iter().rposition(|(owner, _)| *owner < h).unwrap_or(chain.len() - 1);
        chain[i].1.clone()
    }
}

pub(in crate::proxy) fn a(name: &str, last: u8) -> Record {
    Record::from_rdata(n(name), TTL, RData::A(A(Ipv4Addr::new(198, 19, 1, last))))
}

pub(in crate::proxy) fn answer(qname: &str, answers: Vec<Record>, authorities: Vec<Record>) -> (Query, Message) {
    let query = Query::query(n(qname), RecordType::A);
    let mut msg = Message::query();
    msg.add_query(query.clone());
    msg.answers = answers;
    msg.authorities = authorities;
    (query, msg)
}

/// `*.wild.signed.lab A 198.19.1.2` serving `qname`, with the NSEC3 that
/// covers its next closer name. `wild_sig` is the zone's one signature over
/// the wildcard (`wildcard_sig`); a server hands it out under each name.
fn wildcard_answer(z: &Zone, chain: &[(Vec<u8>, Vec<Record>)], wild_sig: &Record, qname: &str) -> (Query, Message) {
    let mut sig = wild_sig.clone();
    sig.name = n(qname);
    answer(qname, vec![a(qname, 2), sig], z.covering_nsec3(chain, qname))
}

fn wildcard_sig(z: &Zone) -> Record {
    let rr = a("*.wild.signed.lab.", 2);
    z.sign(std::slice::from_ref(&rr))
}

const CHAIN: [&str; 4] = ["signed.lab.", "wild.signed.lab.", "*.wild.signed.lab.", "www.signed.lab."];

fn check(z: &Zone, query: &Query, msg: &Message, memo: &SignatureMemo) -> Result<(), Decline> {
    let zone = signer(query, msg)?;
    assert_eq!(zone, z.name);
    prove(query, msg, &zone, &z.keys(), memo, NOW)
}

#[test]
fn a_signed_answer_is_secure() {
    let z = Zone::new("signed.lab.");
    let rr = a("www.signed.lab.", 1);
    let sig = z.sign(std::slice::from_ref(&rr));
    let (query, msg) = answer("www.signed.lab.", vec![rr, sig], vec![]);
    let memo = SignatureMemo::default();
    assert_eq!(check(&z, &query, &msg, &memo), Ok(()));
    assert_eq!(memo.checked(), 1);
}

#[test]
fn wildcard_names_after_the_first_cost_no_signature_check() {
    let z = Zone::new("signed.lab.");
    let chain = z.nsec3_chain(&CHAIN);
    let memo = SignatureMemo::default();
    let wild_sig = wildcard_sig(&z);
    let names: Vec<String> = (0..50).map(|i| format!("g{i}.wild.signed.lab.")).collect();
    for name in &names {
        let (query, msg) = wildcard_answer(&z, &chain, &wild_sig, name);
        assert_eq!(check(&z, &query, &msg, &memo), Ok(()), "{name}");
    }
    // One answer signature (the same for every name) and at most one per
    // NSEC3 record of the chain, not two per name.
    assert!(memo.checked() <= 1 + CHAIN.len() as u64, "checked {}", memo.checked());
}

#[test]
fn a_remembered_signature_still_needs_its_validity_window() {
    let z = Zone::new("signed.lab.");
    let rr = a("www.signed.lab.", 1);
    let sig = z.sign_with(std::slice::from_ref(&rr), 3, NOW - 3600, NOW + 60);
    let (query, msg) = answer("www.signed.lab.", vec![rr, sig], vec![]);
    let memo = SignatureMemo::default();
    assert_eq!(check(&z, &query, &msg, &memo), Ok(()));
    let zone = z.name.clone();
    let later = prove(&query, &msg, &zone, &z.keys(), &memo, NOW + 61);
    assert_eq!(later, Err(Decline::AnswerUnverified));
    let early = prove(&query, &msg, &zone, &z.keys(), &memo, NOW - 3601);
    assert_eq!(early, Err(Decline::AnswerUnverified));
}

#[test]
fn forged_data_is_declined_and_not_remembered() {
    let z = Zone::new("signed.lab.");
    let rr = a("www.signed.lab.", 1);
    let sig = z.sign(std::slice::from_ref(&rr));
    // The signature of .1 over a forged .66.
    let (query, msg) = answer("www.signed.lab.", vec![a("www.signed.lab.", 66), sig.clone()], vec![]);
    let memo = SignatureMemo::default();
    assert_eq!(check(&z, &query, &msg, &memo), Err(Decline::AnswerUnverified));
    assert_eq!(check(&z, &query, &msg, &memo), Err(Decline::AnswerUnverified), "a failure must not be remembered as a success");
    assert_eq!(memo.checked(), 2);
    // Another zone's key does not verify it either.
    let other = Zone::new("signed.lab.");
    let (query, msg) = answer("www.signed.lab.", vec![rr, sig], vec![]);
    assert_eq!(prove(&query, &msg, &z.name, &other.keys(), &memo, NOW), Err(Decline::AnswerUnverified));
}

#[test]
fn keys_that_may_not_sign_are_not_used() {
    for flags in [256 | 0x0080 /* revoked */, 0 /* not a zone key */] {
        let z = Zone::with_flags("signed.lab.", flags);
        let rr = a("www.signed.lab.", 1);
        let sig = z.sign(std::slice::from_ref(&rr));
        let (query, msg) = answer("www.signed.lab.", vec![rr, sig], vec![]);
        assert_eq!(check(&z, &query, &msg, &SignatureMemo::default()), Err(Decline::AnswerUnverified), "flags {flags}");
    }
}

#[test]
fn a_wildcard_expansion_needs_its_nsec3_proof() {
    let z = Zone::new("signed.lab.");
    let chain = z.nsec3_chain(&CHAIN);
    let memo = SignatureMemo::default();
    let (query, mut msg) = wildcard_answer(&z, &chain, &wildcard_sig(&z), "x.wild.signed.lab.");
    let proof = std::mem::take(&mut msg.authorities);
    assert_eq!(check(&z, &query, &msg, &memo), Err(Decline::ExpansionWithoutDenial));

    // An NSEC3 of the zone that covers some other hash.
    let other = chain.iter().find(|(_, recs)| recs[..1] != proof[..1]).unwrap();
    msg.authorities = other.1.clone();
    assert_eq!(check(&z, &query, &msg, &memo), Err(Decline::NoNsec3Cover));

    // The right NSEC3 with its next hash altered: its signature fails.
    let mut forged = proof.clone();
    if let RData::DNSSEC(DNSSECRData::NSEC3(n3)) = &forged[0].data {
        let next = vec![0xff; 20];
        forged[0].data = RData::DNSSEC(DNSSECRData::NSEC3(NSEC3::new(
            Nsec3HashAlgorithm::SHA1, false, n3.iterations(), n3.salt().to_vec(), next, [RecordType::A],
        )));
    }
    msg.authorities = forged;
    assert_eq!(check(&z, &query, &msg, &memo), Err(Decline::Unverified));

    msg.authorities = proof;
    assert_eq!(check(&z, &query, &msg, &memo), Ok(()));
}

#[test]
fn the_wildcard_proof_must_be_for_the_next_closer_name() {
    // x.y.wild.signed.lab from *.wild.signed.lab: the proof covers
    // y.wild.signed.lab; one that covers only x.y.wild.signed.lab is not it.
    let z = Zone::new("signed.lab.");
    let chain = z.nsec3_chain(&CHAIN);
    let right = z.covering_nsec3(&chain, "y.wild.signed.lab.");
    // A first label whose hash another NSEC3 covers than the next closer's.
    let qname = (0..)
        .map(|i| format!("x{i}.y.wild.signed.lab."))
        .find(|q| z.covering_nsec3(&chain, q)[0] != right[0])
        .unwrap();
    let wrong = z.covering_nsec3(&chain, &qname);
    let rr = a(&qname, 2);
    let sig = z.sign_with(std::slice::from_ref(&rr), 3, NOW - 3600, NOW + 3600);
    let memo = SignatureMemo::default();
    let (query, msg) = answer(&qname, vec![rr.clone(), sig.clone()], right);
    assert_eq!(check(&z, &query, &msg, &memo), Ok(()));
    let (query, msg) = answer(&qname, vec![rr, sig], wrong);
    assert_eq!(check(&z, &query, &msg, &memo), Err(Decline::NoNsec3Cover));
}

#[test]
fn nsec3_proofs_over_the_iteration_limit_are_left_to_hickory() {
    let z = Zone::new("signed.lab.");
    let qname = "x.wild.signed.lab.";
    let h = Nsec3HashAlgorithm::SHA1.hash(&[], &n("x.wild.signed.lab."), 101).unwrap().as_ref().to_vec();
    let mut below = h.clone();
    *below.last_mut().unwrap() ^= 1;
    let (lo, hi) = if below < h { (below, vec![0xff; 20]) } else { (vec![0; 20], below) };
    let owner = Name::from_str(&BASE32_DNSSEC.encode(&lo)).unwrap().append_domain(&z.name).unwrap();
    let nsec3 = Record::from_rdata(owner, TTL, RData::DNSSEC(DNSSECRData::NSEC3(NSEC3::new(
        Nsec3HashAlgorithm::SHA1, false, 101, vec![], hi, [RecordType::A],
    ))));
    let nsig = z.sign(std::slice::from_ref(&nsec3));
    let rr = a(qname, 2);
    let sig = z.sign_with(std::slice::from_ref(&rr), 3, NOW - 3600, NOW + 3600);
    let (query, msg) = answer(qname, vec![rr, sig], vec![nsec3, nsig]);
    assert_eq!(check(&z, &query, &msg, &SignatureMemo::default()), Err(Decline::Nsec3IterationsOverLimit));
}

#[test]
fn an_nsec_zone_wildcard_is_proven_by_a_covering_nsec() {
    let z = Zone::new("signed.lab.");
    let nsec = |owner: &str, next: &str| {
        let rec = Record::from_rdata(n(owner), TTL, RData::DNSSEC(DNSSECRData::NSEC(NSEC::new(n(next), [RecordType::A]))));
        let sig = z.sign(std::slice::from_ref(&rec));
        vec![rec, sig]
    };
    let qname = "x.wild.signed.lab.";
    let rr = a(qname, 2);
    let sig = z.sign_with(std::slice::from_ref(&rr), 3, NOW - 3600, NOW + 3600);
    let memo = SignatureMemo::default();
    // *.wild < x.wild < www: covers, and the closest encloser is wild.
    let (query, msg) = answer(qname, vec![rr.clone(), sig.clone()], nsec("*.wild.signed.lab.", "www.signed.lab."));
    assert_eq!(check(&z, &query, &msg, &memo), Ok(()));
    // Covers the name, but says nothing of wild.signed.lab: not this wildcard.
    let (query, msg) = answer(qname, vec![rr.clone(), sig.clone()], nsec("w.signed.lab.", "www.signed.lab."));
    assert_eq!(check(&z, &query, &msg, &memo), Err(Decline::NoNsecCover));
    // Both kinds at once: hickory calls that bogus.
    let chain = z.nsec3_chain(&CHAIN);
    let mut both = nsec("*.wild.signed.lab.", "www.signed.lab.");
    both.extend(z.covering_nsec3(&chain, qname));
    let (query, msg) = answer(qname, vec![rr, sig], both);
    assert_eq!(check(&z, &query, &msg, &memo), Err(Decline::BothNsecAndNsec3));
}

#[test]
fn every_authority_rrset_must_verify() {
    let z = Zone::new("signed.lab.");
    let rr = a("www.signed.lab.", 1);
    let sig = z.sign(std::slice::from_ref(&rr));
    let ns = Record::from_rdata(n("signed.lab."), TTL, RData::NS(NS(n("ns.signed.lab."))));
    let memo = SignatureMemo::default();
    let (query, msg) = answer("www.signed.lab.", vec![rr.clone(), sig.clone()], vec![ns.clone()]);
    assert_eq!(check(&z, &query, &msg, &memo), Err(Decline::Unverified));
    let nsig = z.sign(std::slice::from_ref(&ns));
    let (query, msg) = answer("www.signed.lab.", vec![rr.clone(), sig.clone()], vec![ns, nsig]);
    assert_eq!(check(&z, &query, &msg, &memo), Ok(()));
    // A record of the parent's, even signed by the parent, is not this zone's.
    let parent = Zone::new("lab.");
    let pns = Record::from_rdata(n("lab."), TTL, RData::NS(NS(n("ns.lab."))));
    let psig = parent.sign(std::slice::from_ref(&pns));
    let (query, msg) = answer("www.signed.lab.", vec![rr, sig], vec![pns, psig]);
    assert_eq!(check(&z, &query, &msg, &memo), Err(Decline::AuthorityOutsideZone));
}

#[test]
fn shapes_other_than_a_direct_positive_answer_are_declined() {
    let z = Zone::new("signed.lab.");
    let rr = a("www.signed.lab.", 1);
    let sig = z.sign(std::slice::from_ref(&rr));

    let (query, mut msg) = answer("www.signed.lab.", vec![rr.clone(), sig.clone()], vec![]);
    msg.metadata.response_code = ResponseCode::NXDomain;
    assert_eq!(signer(&query, &msg), Err(Decline::NotNoError));

    let (query, msg) = answer("www.signed.lab.", vec![rr.clone()], vec![]);
    assert_eq!(signer(&query, &msg), Err(Decline::NoSignedAnswer));

    // An answer record of another name (as in a CNAME chain).
    let (query, msg) = answer("alias.signed.lab.", vec![rr.clone(), sig.clone()], vec![]);
    assert_eq!(signer(&query, &msg), Err(Decline::AnswerOfAnotherName));

    // Signed by a zone that is not above the name.
    let other = Zone::new("other.lab.");
    let osig = other.sign(std::slice::from_ref(&rr));
    let (query, msg) = answer("www.signed.lab.", vec![rr.clone(), osig], vec![]);
    assert_eq!(signer(&query, &msg), Err(Decline::SignerNotAncestor));

    let mut q = Query::query(n("signed.lab."), RecordType::DNSKEY);
    q.set_query_class(DNSClass::IN);
    assert_eq!(signer(&q, &msg), Err(Decline::MetaQueryType));

    // A signature that claims fewer labels than its own zone has.
    let low = z.sign_with(std::slice::from_ref(&rr), 1, NOW - 3600, NOW + 3600);
    let (query, msg) = answer("www.signed.lab.", vec![rr.clone(), low], vec![]);
    assert_eq!(check(&z, &query, &msg, &SignatureMemo::default()), Err(Decline::AnswerUnverified));

    // A record of another class anywhere.
    let (query, mut msg) = answer("www.signed.lab.", vec![rr, sig], vec![]);
    let mut ch = a("www.signed.lab.", 9);
    ch.dns_class = DNSClass::CH;
    msg.additionals.push(ch);
    assert_eq!(check(&z, &query, &msg, &SignatureMemo::default()), Err(Decline::AnotherClass));
}

#[test]
fn the_memo_stays_bounded() {
    let z = Zone::new("signed.lab.");
    let memo = SignatureMemo::default();
    let key = &z.keys()[0];
    for i in 0..(MEMO_ENTRIES + 10) as u32 {
        // Distinct signed data; a real signature is not needed to fill it.
        memo.lock().insert(Digest::new(&i.to_be_bytes(), DigestType::SHA256).unwrap().as_ref().try_into().unwrap());
    }
    let rr = a("www.signed.lab.", 1);
    let sig = z.sign(std::slice::from_ref(&rr));
    let (query, msg) = answer("www.signed.lab.", vec![rr, sig], vec![]);
    assert_eq!(prove(&query, &msg, &z.name, std::slice::from_ref(key), &memo, NOW), Ok(()));
    assert!(memo.lock().len() <= MEMO_ENTRIES, "{}", memo.lock().len());
}

#[test]
fn an_opt_out_nsec3_does_not_prove_an_expansion() {
    // Opt-out spans may hide unsigned delegations (RFC 5155 §6): a wildcard's
    // data replayed under one must not come out secure here.
    let z = Zone::new("signed.lab.");
    let qname = "x.wild.signed.lab.";
    let h = z.nsec3_hash(&n(qname));
    let (lo, hi) = (vec![0u8; 20], vec![0xffu8; 20]);
    assert!(hash_covers(&lo, &hi, &h));
    let owner = Name::from_str(&BASE32_DNSSEC.encode(&lo)).unwrap().append_domain(&z.name).unwrap();
    let nsec3 = |opt_out| {
        let rec = Record::from_rdata(owner.clone(), TTL, RData::DNSSEC(DNSSECRData::NSEC3(NSEC3::new(
            Nsec3HashAlgorithm::SHA1, opt_out, 1, vec![0xab], hi.clone(), [RecordType::A],
        ))));
        let sig = z.sign(std::slice::from_ref(&rec));
        vec![rec, sig]
    };
    let wild = wildcard_sig(&z);
    let memo = SignatureMemo::default();
    let (query, mut msg) = wildcard_answer(&z, &z.nsec3_chain(&CHAIN), &wild, qname);
    msg.authorities = nsec3(true);
    assert_eq!(check(&z, &query, &msg, &memo), Err(Decline::OptOutCover));
    msg.authorities = nsec3(false);
    assert_eq!(check(&z, &query, &msg, &memo), Ok(()));
}

#[test]
fn a_denial_beside_a_direct_answer_is_left_to_hickory() {
    let z = Zone::new("signed.lab.");
    let chain = z.nsec3_chain(&CHAIN);
    let rr = a("www.signed.lab.", 1);
    let sig = z.sign(std::slice::from_ref(&rr));
    let (query, msg) = answer("www.signed.lab.", vec![rr, sig], chain[0].1.clone());
    assert_eq!(check(&z, &query, &msg, &SignatureMemo::default()), Err(Decline::DenialBesideDirectAnswer));
}

/// `n` signatures by `z` under `rr`'s name and type that match its key's
/// tag and fail: each signs other data.
fn decoys(z: &Zone, rr: &Record, n: usize) -> Vec<Record> {
    (1..=n as u8)
        .map(|i| {
            let mut other = rr.clone();
            other.data = RData::A(A(Ipv4Addr::new(203, 0, 113, i)));
            let mut sig = z.sign(std::slice::from_ref(&other));
            sig.name = rr.name.clone();
            sig
        })
        .collect()
}

#[test]
fn an_answer_full_of_bad_signatures_buys_a_bounded_number_of_checks() {
    // KeyTrap-style: every RRset is genuinely signed, but each good signature
    // comes after three that match the key's tag and fail. Unbounded, that
    // is 32 checks; the crypto runs at most MAX_CHECKS_PER_ANSWER.
    let z = Zone::new("signed.lab.");
    let signed_late = |rr: Record| -> Vec<Record> {
        let mut out = decoys(&z, &rr, MAX_SIGS_PER_RRSET - 1);
        out.push(z.sign(std::slice::from_ref(&rr)));
        out.push(rr);
        out
    };
    let answers = signed_late(a("www.signed.lab.", 1));
    let authorities = (0..MAX_RRSETS - 1).flat_map(|i| signed_late(a(&format!("h{i}.signed.lab."), 1))).collect();
    let (query, msg) = answer("www.signed.lab.", answers, authorities);
    let memo = SignatureMemo::default();
    assert_eq!(check(&z, &query, &msg, &memo), Err(Decline::Unverified));
    assert_eq!(memo.checked(), u64::from(MAX_CHECKS_PER_ANSWER));
}

#[test]
fn signatures_past_the_limit_are_not_looked_at() {
    // Five signatures, the good one last: the shortcut checks four and
    // declines (hickory then judges; the second opinion counts it a failure).
    let z = Zone::new("signed.lab.");
    let rr = a("www.signed.lab.", 1);
    let mut answers = decoys(&z, &rr, MAX_SIGS_PER_RRSET);
    answers.push(z.sign(std::slice::from_ref(&rr)));
    answers.push(rr);
    let (query, msg) = answer("www.signed.lab.", answers, vec![]);
    let memo = SignatureMemo::default();
    assert_eq!(check(&z, &query, &msg, &memo), Err(Decline::AnswerUnverified));
    assert_eq!(memo.checked(), MAX_SIGS_PER_RRSET as u64);
}

#[test]
fn signatures_that_cannot_verify_do_not_count_against_the_limit() {
    // A re-signed RRset served with its expired signatures, and signatures
    // by keys the zone does not hold, ahead of the good one: none of them
    // can verify, so none is one of the four looked at.
    let z = Zone::new("signed.lab.");
    let rr = a("www.signed.lab.", 1);
    let mut answers: Vec<Record> =
        (1..=MAX_SIGS_PER_RRSET as u32).map(|i| z.sign_with(std::slice::from_ref(&rr), 3, NOW - 7200 - i, NOW - 3600)).collect();
    answers.extend((0..MAX_SIGS_PER_RRSET).map(|_| Zone::new("signed.lab.").sign(std::slice::from_ref(&rr))));
    answers.push(z.sign(std::slice::from_ref(&rr)));
    answers.push(rr);
    let (query, msg) = answer("www.signed.lab.", answers, vec![]);
    let memo = SignatureMemo::default();
    assert_eq!(check(&z, &query, &msg, &memo), Ok(()));
    assert_eq!(memo.checked(), 1, "only the good signature was worth a check");
}

#[test]
fn the_second_opinion_looks_past_junk_that_makes_the_shortcut_decline() {
    // A forger searching for a collision in hickory's cache key varies junk
    // RRSIGs; those make the shortcut decline on shape. The second opinion
    // checks every RRset against its signers' proven keys all the same.
    let z = Zone::new("signed.lab.");
    let other = Zone::new("lab.");
    let rr = a("www.signed.lab.", 1);
    let good = z.sign(std::slice::from_ref(&rr));
    let junk = other.sign(std::slice::from_ref(&rr)); // another signer: a shape decline
    let memo = SignatureMemo::default();
    fn zone_keys(zones: Vec<&Zone>) -> Vec<(Name, Arc<[DNSKEY]>)> {
        zones.into_iter().map(|z| (z.name.clone(), Arc::from(z.keys()))).collect()
    }
    let verifies = |msg: &Message, keys: &[(Name, Arc<[DNSKEY]>)]| {
        let rrsets = signed_rrsets(msg, DNSClass::IN).unwrap();
        rrsets_verify(msg, &rrsets, keys, &memo, NOW, DNSClass::IN, &CheckBudget::for_opinion()).is_ok()
    };

    let (query, msg) = answer("www.signed.lab.", vec![rr.clone(), junk.clone(), good.clone()], vec![]);
    assert_eq!(signer(&query, &msg), Err(Decline::DifferentSigners));
    let rrsets = signed_rrsets(&msg, DNSClass::IN).unwrap();
    assert_eq!(rrsets.len(), 1);
    assert_eq!(rrsets[0].signers, [other.name.clone(), z.name.clone()]);
    assert!(verifies(&msg, &zone_keys(vec![&z])), "the genuine data");

    // Forged data under the same junk and the genuine signature.
    let (_, msg) = answer("www.signed.lab.", vec![a("www.signed.lab.", 66), junk, good.clone()], vec![]);
    assert!(!verifies(&msg, &zone_keys(vec![&z, &other])));

    // Enough same-signer junk ahead of the good signature to hit the limits:
    // not verified (the shortcut itself would only decline).
    let mut answers = vec![rr.clone()];
    answers.extend(decoys(&z, &rr, MAX_SIGS_PER_RRSET));
    answers.push(good.clone());
    let (_, msg) = answer("www.signed.lab.", answers, vec![]);
    assert!(!verifies(&msg, &zone_keys(vec![&z])));

    // Every RRset counts, not only the query's own: a forged CNAME in front
    // of a genuine target, a forged denial record beside a genuine SOA.
    let cname = Record::from_rdata(n("alias.signed.lab."), TTL, RData::CNAME(CNAME(n("www.signed.lab."))));
    let cname_sig = z.sign(std::slice::from_ref(&cname));
    let (_, msg) = answer("alias.signed.lab.", vec![cname.clone(), cname_sig.clone(), rr.clone(), good.clone()], vec![]);
    assert!(verifies(&msg, &zone_keys(vec![&z])), "a genuine CNAME chain");
    let mut forged = cname.clone();
    forged.data = RData::CNAME(CNAME(n("evil.signed.lab.")));
    let (_, msg) = answer("alias.signed.lab.", vec![forged, cname_sig, rr.clone(), good], vec![]);
    assert!(!verifies(&msg, &zone_keys(vec![&z])), "a forged CNAME under the genuine signature");
    let chain = z.nsec3_chain(&CHAIN);
    let mut nsec3 = z.covering_nsec3(&chain, "nx.signed.lab.");
    let (_, msg) = answer("nx.signed.lab.", vec![], nsec3.clone());
    assert!(verifies(&msg, &zone_keys(vec![&z])), "a genuine denial");
    let RData::DNSSEC(DNSSECRData::NSEC3(n3)) = &nsec3[0].data else { unreachable!() };
    let widened = NSEC3::new(Nsec3HashAlgorithm::SHA1, false, 1, vec![0xab], vec![0xff; 20], n3.type_bit_maps().collect::<Vec<_>>());
    nsec3[0].data = RData::DNSSEC(DNSSECRData::NSEC3(widened));
    let (_, msg) = answer("nx.signed.lab.", vec![], nsec3);
    assert!(!verifies(&msg, &zone_keys(vec![&z])), "a widened NSEC3 under the genuine signature");

    // An RRset nobody above it signs cannot pass, a CNAME beside a DNAME
    // included: hickory calls no unsigned RRset secure by itself.
    let (_, msg) = answer("www.signed.lab.", vec![rr.clone()], vec![]);
    assert_eq!(signed_rrsets(&msg, DNSClass::IN), Err("an RRset no zone above it signs"));
    // hickory-proto 0.26 has no DNAME type: its RDATA is the target's wire form.
    let target = NULL::with(b"\x06signed\x03lab\x00".to_vec());
    let dname = Record::from_rdata(n("old.signed.lab."), TTL, RData::Unknown { code: RecordType::DNAME, rdata: target });
    let synthesized = Record::from_rdata(n("www.old.signed.lab."), TTL, RData::CNAME(CNAME(n("evil.example."))));
    let dname_sig = z.sign(std::slice::from_ref(&dname));
    let (_, msg) = answer("www.old.signed.lab.", vec![dname, dname_sig, synthesized], vec![]);
    assert_eq!(signed_rrsets(&msg, DNSClass::IN), Err("an RRset no zone above it signs"));
}

#[test]
fn the_second_opinion_takes_no_expanded_denial_and_says_which_keys_to_fetch_again() {
    let z = Zone::new("signed.lab.");
    let memo = SignatureMemo::default();
    let keys = vec![(z.name.clone(), Arc::<[DNSKEY]>::from(z.keys()))];
    let check = |msg: &Message, keys: &[(Name, Arc<[DNSKEY]>)]| {
        let rrsets = signed_rrsets(msg, DNSClass::IN).unwrap();
        rrsets_verify(msg, &rrsets, keys, &memo, NOW, DNSClass::IN, &CheckBudget::for_opinion())
    };
    let unverified = |unknown_keys: Vec<Name>| Err(OpinionFailure::Unverified { signers: vec![z.name.clone()], unknown_keys });

    // The zone's genuine NSEC at *.signed.lab, replayed at victim.signed.lab:
    // its signature rebuilds the wildcard owner and verifies, but a denial
    // record is never an expansion (RFC 4035 §5.3.4).
    let nsec = NSEC::new(n("z.signed.lab."), [RecordType::A, RecordType::RRSIG, RecordType::NSEC]);
    let genuine = Record::from_rdata(n("*.signed.lab."), TTL, RData::DNSSEC(DNSSECRData::NSEC(nsec)));
    let sig = z.sign(std::slice::from_ref(&genuine));
    let (_, msg) = answer("victim.signed.lab.", vec![], vec![genuine.clone(), sig.clone()]);
    assert_eq!(check(&msg, &keys), Ok(()));
    let mut replayed = (genuine, sig);
    replayed.0.name = n("victim.signed.lab.");
    replayed.1.name = n("victim.signed.lab.");
    let (_, msg) = answer("victim.signed.lab.", vec![], vec![replayed.0, replayed.1]);
    assert_eq!(check(&msg, &keys), unverified(vec![]));

    // Nor is an answer RRset in the authority section, and an NSEC3 must
    // sit right under its signer's apex (each signed as it stands here).
    let expanded = {
        let rr = a("x.wild.signed.lab.", 1);
        let sig = z.sign_with(std::slice::from_ref(&rr), 3, NOW - 3600, NOW + 3600);
        vec![rr, sig]
    };
    let (_, msg) = answer("x.wild.signed.lab.", vec![], expanded.clone());
    assert_eq!(check(&msg, &keys), unverified(vec![]));
    let (_, msg) = answer("x.wild.signed.lab.", expanded, vec![]);
    assert_eq!(check(&msg, &keys), Ok(()), "the same expansion as the answer");
    let mut deep = z.nsec3_chain(&CHAIN)[0].1[0].clone();
    deep.name = Name::from_str(&format!("{}.sub.signed.lab.", deep.name.iter().next().map(|l| String::from_utf8_lossy(l).into_owned()).unwrap())).unwrap();
    let deep_sig = z.sign(std::slice::from_ref(&deep));
    let (_, msg) = answer("nx.sub.signed.lab.", vec![], vec![deep, deep_sig]);
    assert_eq!(check(&msg, &keys), unverified(vec![]));

    // Signed by a key we do not hold (a rollover?): worth fetching the
    // zone's keys again. Signed by ours and forged: not.
    let rr = a("www.signed.lab.", 1);
    let stranger = std::iter::repeat_with(|| Zone::new("signed.lab."))
        .find(|o| o.signer.calculate_key_tag().unwrap() != z.signer.calculate_key_tag().unwrap())
        .unwrap();
    let (_, msg) = answer("www.signed.lab.", vec![rr.clone(), stranger.sign(std::slice::from_ref(&rr))], vec![]);
    assert_eq!(check(&msg, &keys), unverified(vec![z.name.clone()]));
    let (_, msg) = answer("www.signed.lab.", vec![a("www.signed.lab.", 66), z.sign(std::slice::from_ref(&rr))], vec![]);
    assert_eq!(check(&msg, &keys), unverified(vec![]));

    // Genuine RRsets, each behind three junk signatures with the zone's own
    // key tag: four checks apiece, until the answer's budget is spent.
    let mut msg = Message::query();
    for i in 0..=(MAX_OPINION_CHECKS as usize / MAX_SIGS_PER_RRSET) {
        let rr = a(&format!("h{i}.signed.lab."), 1);
        msg.answers.push(rr.clone());
        msg.answers.extend(decoys(&z, &rr, MAX_SIGS_PER_RRSET - 1));
        msg.answers.push(z.sign(std::slice::from_ref(&rr)));
    }
    assert_eq!(check(&msg, &keys), Err(OpinionFailure::Budget));
}
