//! What goes back to the client: the accepted upstream answer under the
//! client's own id and question, or an error built here. Extended DNS
//! Errors (RFC 8914) ride as a raw EDNS option: hickory-proto 0.26 has no
//! type for them.

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        rdata::{opt::{EdnsCode, EdnsOption}, CNAME, NS, PTR},
        Name, RData,
    },
};

/// RFC 8914 §2: EDNS option code of Extended DNS Error.
pub const EDE_OPTION: u16 = 15;
/// RFC 8914 §4.7.
pub const EDE_DNSSEC_BOGUS: u16 = 6;
/// RFC 8914 §4.16.
pub const EDE_BLOCKED: u16 = 15;
/// RFC 8914 §4.23.
pub const EDE_NO_REACHABLE_AUTHORITY: u16 = 22;
/// RFC 8914 §4.1: Other. The text says what happened.
pub const EDE_OTHER: u16 = 0;

/// UDP payload we advertise and accept: the DNS Flag Day 2020 value,
/// which avoids IP fragmentation (a fragment is easier to forge).
pub const EDNS_PAYLOAD: u16 = 1232;

/// Why the proxy answers by itself, and the EDE it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ede {
    pub code: u16,
    pub text: String,
}

impl Ede {
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Ede { code, text: text.into() }
    }

    /// RFC 8914 §2: INFO-CODE (16 bits), then EXTRA-TEXT in UTF-8.
    pub fn option(&self) -> EdnsOption {
        let mut v = self.code.to_be_bytes().to_vec();
        v.extend_from_slice(self.text.as_bytes());
        EdnsOption::Unknown(EDE_OPTION, v)
    }
}

/// Request fields the reply needs.
#[derive(Debug, Clone)]
pub struct ClientQuery {
    pub id: u16,
    pub query: Query,
    pub rd: bool,
    pub cd: bool,
    /// RFC 6840 §5.7: a client that sets AD understands it in the reply.
    pub ad: bool,
    /// `Some(payload)` when the client sent an OPT record.
    pub edns_payload: Option<u16>,
    pub dnssec_ok: bool,
}

impl ClientQuery {
    pub fn from_request(req: &Message) -> Option<Self> {
        let [q] = req.queries.as_slice() else { return None };
        Some(ClientQuery {
            id: req.metadata.id,
            query: q.clone(),
            rd: req.metadata.recursion_desired,
            cd: req.metadata.checking_disabled,
            ad: req.metadata.authentic_data,
            edns_payload: req.edns.as_ref().map(|e| e.max_payload()),
            dnssec_ok: req.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
        })
    }

    /// Largest UDP reply the client accepts (RFC 6891 §6.2.5: below 512
    /// counts as 512); we never send more than we advertise ourselves.
    pub fn udp_limit(&self) -> usize {
        match self.edns_payload {
            Some(p) => p.clamp(512, EDNS_PAYLOAD.max(512)) as usize,
            None => 512,
        }
    }
}

/// The reply's OPT: present only when the client sent one (RFC 6891 §7).
fn reply_edns(client: &ClientQuery, ede: Option<&Ede>) -> Option<Edns> {
    client.edns_payload?;
    let mut e = Edns::new();
    e.set_max_payload(EDNS_PAYLOAD);
    e.set_dnssec_ok(client.dnssec_ok);
    if let Some(ede) = ede {
        e.options_mut().insert(ede.option());
    }
    Some(e)
}

/// An answer composed here: `rcode`, the client's question, no records.
pub fn local_reply(client: &ClientQuery, rcode: ResponseCode, ede: Option<&Ede>) -> Message {
    let mut m = Message::error_msg(client.id, OpCode::Query, rcode);
    m.metadata.recursion_desired = client.rd;
    m.metadata.recursion_available = true;
    m.metadata.checking_disabled = client.cd;
    m.add_query(client.query.clone());
    if let Some(e) = reply_edns(client, ede) {
        m.set_edns(e);
    }
    m
}

/// The upstream's answer re-addressed to the client: the client's id and
/// question spelling, the upstream's records with the 0x20 case undone.
/// AD is cleared: the upstream's AD means nothing to us (RFC 6840 §5.8);
/// the handler sets it again when check 6 found the answer secure.
pub fn forward_reply(client: &ClientQuery, sent: &Name, mut up: Message, ede: Option<&Ede>) -> Message {
    let mut m = Message::response(client.id, OpCode::Query);
    let h = &mut m.metadata;
    h.recursion_desired = client.rd;
    h.recursion_available = up.metadata.recursion_available;
    h.authoritative = up.metadata.authoritative;
    h.checking_disabled = client.cd;
    h.authentic_data = false;
    // Set only when the answer came over a stream and still did not fit
    // (the UDP path retries a truncated answer over TCP): the client, and
    // CoreDNS's cache, must know it is partial.
    h.truncation = up.metadata.truncation;
    h.response_code = up.metadata.response_code;
    m.add_query(client.query.clone());
    let original = client.query.name();
    for r in up.answers.iter_mut().chain(up.authorities.iter_mut()).chain(up.additionals.iter_mut()) {
        restore_case(&mut r.name, sent, original);
        match &mut r.data {
            RData::CNAME(CNAME(n)) | RData::NS(NS(n)) | RData::PTR(PTR(n)) => restore_case(n, sent, original),
            _ => {}
        }
    }
    m.answers = up.answers;
    m.authorities = up.authorities;
    m.additionals = up.additionals;
    if let Some(e) = reply_edns(client, ede) {
        m.set_edns(e);
    }
    if client.dnssec_ok {
        m
    } else {
        // RFC 4035 §3.2.1: no DNSSEC records for a client that did not ask.
        m.maybe_strip_dnssec_records(false)
    }
}

/// Undoes our 0x20 randomization in `n`: the labels `n` shares with the
/// name we sent (compared from the right, ignoring case) are respelled as
/// the client wrote them. The mixed case leaks into owner names through
/// compression pointers and into record data (NS and CNAME targets under
/// the qname's parents), where CoreDNS would otherwise cache it.
pub fn restore_case(n: &mut Name, sent: &Name, original: &Name) {
    let sent_labels: Vec<&[u8]> = sent.iter().collect();
    let orig_labels: Vec<&[u8]> = original.iter().collect();
    if sent_labels.len() != orig_labels.len() {
        return;
    }
    let mut labels: Vec<&[u8]> = n.iter().collect();
    let mut changed = false;
    for (l, (s, o)) in labels.iter_mut().rev().zip(sent_labels.iter().rev().zip(orig_labels.iter().rev())) {
        if !l.eq_ignore_ascii_case(s) {
            break;
        }
        if *l != *o {
            *l = o;
            changed = true;
        }
    }
    if !changed {
        return;
    }
    if let Ok(mut fixed) = Name::from_labels(labels) {
        fixed.set_fqdn(n.is_fqdn());
        *n = fixed;
    }
}

/// Encodes for UDP: over the client's limit, the answer is cut to the
/// header and question with TC=1 (RFC 1035 §4.2.1) so it retries on TCP.
/// An EDE text (a long rule) can push even a reply without records over a
/// 512-byte limit: the text goes first, the code stays (RFC 8914 §2 makes
/// the text optional), then the records.
pub fn encode_udp(m: &Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = m.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    let mut short = m.clone();
    if ede_codes_only(&mut short) {
        let bytes = short.to_vec().ok()?;
        if bytes.len() <= limit {
            return Some(bytes);
        }
    }
    short.truncate().to_vec().ok()
}

/// Drops the text of every EDE option, keeping each code; `true` if any
/// had text.
fn ede_codes_only(m: &mut Message) -> bool {
    let Some(e) = m.edns.as_mut() else { return false };
    let mut had_text = false;
    let codes: Vec<EdnsOption> = e
        .options()
        .as_ref()
        .iter()
        .filter_map(|(_, o)| match o {
            EdnsOption::Unknown(EDE_OPTION, v) if v.len() >= 2 => {
                had_text |= v.len() > 2;
                Some(EdnsOption::Unknown(EDE_OPTION, v[..2].to_vec()))
            }
            _ => None,
        })
        .collect();
    if !had_text {
        return false;
    }
    e.options_mut().remove(EdnsCode::from(EDE_OPTION));
    for o in codes {
        e.options_mut().insert(o);
    }
    true
}

/// FORMERR for a request too broken to parse (RFC 1035 §4.1.1): id and
/// opcode echoed from the raw header, no sections. `None` when there is no
/// header to answer, or the datagram is itself a response (answering
/// responses lets two servers loop).
pub fn formerr_raw(raw: &[u8]) -> Option<Vec<u8>> {
    let [id0, id1, f0, f1, ..] = *raw else { return None };
    if f0 & 0x80 != 0 {
        return None;
    }
    let opcode = f0 & 0x78;
    let rd = f0 & 0x01;
    let _ = f1;
    let mut out = vec![id0, id1, 0x80 | opcode | rd, 0x80 | ResponseCode::FormErr.low()];
    out.extend_from_slice(&[0; 8]);
    Some(out)
}

/// An error reply to a parsed request that is not a plain query: same id
/// and opcode, no sections but our OPT when the request had one (RFC 6891
/// §7: a responder that implements EDNS includes it), DO echoed.
pub fn header_reply(req: &Message, rcode: ResponseCode) -> Message {
    let mut m = Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
    m.metadata.response_code = rcode;
    m.metadata.recursion_desired = req.metadata.recursion_desired;
    if let Some(theirs) = &req.edns {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD);
        e.set_dnssec_ok(theirs.flags().dnssec_ok);
        m.set_edns(e);
    }
    m
}

/// The EDE options in a reply, as (code, text), for tests and fuzzing.
pub fn ede_of(m: &Message) -> Vec<(u16, String)> {
    let Some(edns) = &m.edns else { return Vec::new() };
    edns.options()
        .as_ref()
        .iter()
        .filter_map(|(_, o)| match o {
            EdnsOption::Unknown(EDE_OPTION, v) if v.len() >= 2 => {
                Some((u16::from_be_bytes([v[0], v[1]]), String::from_utf8_lossy(&v[2..]).into_owned()))
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::{rdata::A, Record, RecordType};

    fn client(edns: bool) -> ClientQuery {
        ClientQuery {
            id: 99,
            query: Query::query(Name::from_ascii("Www.Example.com.").unwrap(), RecordType::A),
            rd: true,
            cd: false,
            ad: false,
            edns_payload: edns.then_some(4096),
            dnssec_ok: false,
        }
    }

    #[test]
    fn ede_is_encoded_on_the_wire_as_rfc_8914_says() {
        let m = local_reply(&client(true), ResponseCode::NXDomain, Some(&Ede::new(EDE_BLOCKED, "blocklist")));
        let wire = m.to_vec().unwrap();
        // OPT option: code 15, length 2 + 9, info code 15, "blocklist".
        let needle = [&[0, 15, 0, 11, 0, 15][..], b"blocklist"].concat();
        assert!(wire.windows(needle.len()).any(|w| w == needle), "{wire:?}");
        let back = Message::from_vec(&wire).unwrap();
        assert_eq!(ede_of(&back), [(15, "blocklist".to_string())]);
        assert_eq!(back.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(back.metadata.id, 99);
    }

    #[test]
    fn no_opt_for_a_client_without_edns() {
        let m = local_reply(&client(false), ResponseCode::ServFail, Some(&Ede::new(EDE_DNSSEC_BOGUS, "")));
        assert!(m.edns.is_none());
        assert!(ede_of(&Message::from_vec(&m.to_vec().unwrap()).unwrap()).is_empty());
    }

    #[test]
    fn forward_reply_restores_the_clients_case() {
        let c = client(true);
        let sent = Name::from_ascii("wWW.eXAMPLE.COm.").unwrap();
        let mut up = Message::response(1234, OpCode::Query);
        up.add_query(Query::query(sent.clone(), RecordType::A));
        up.add_answer(Record::from_rdata(sent.clone(), 60, RData::A(A::new(192, 0, 2, 1))));
        up.add_authority(Record::from_rdata(
            Name::from_ascii("eXAMPLE.COm.").unwrap(),
            60,
            RData::NS(NS(Name::from_ascii("nS1.eXAMPLE.COm.").unwrap())),
        ));
        up.metadata.authentic_data = true;
        let m = forward_reply(&c, &sent, up, None);
        assert_eq!(m.metadata.id, 99);
        assert!(!m.metadata.authentic_data);
        assert!(m.queries[0].name().eq_case(c.query.name()));
        assert!(m.answers[0].name.eq_case(&Name::from_ascii("Www.Example.com.").unwrap()));
        // The suffix shared with the qname is respelled; other labels keep
        // the upstream's spelling.
        assert!(m.authorities[0].name.eq_case(&Name::from_ascii("Example.com.").unwrap()));
        let RData::NS(NS(ns)) = &m.authorities[0].data else { panic!() };
        assert!(ns.eq_case(&Name::from_ascii("nS1.Example.com.").unwrap()), "{ns}");
    }

    #[test]
    fn oversized_udp_answers_are_truncated() {
        let c = client(false);
        let mut m = local_reply(&c, ResponseCode::NoError, None);
        for i in 0..60u8 {
            m.add_answer(Record::from_rdata(c.query.name().clone(), 60, RData::A(A::new(192, 0, 2, i))));
        }
        let wire = encode_udp(&m, c.udp_limit()).unwrap();
        assert!(wire.len() <= 512);
        let back = Message::from_vec(&wire).unwrap();
        assert!(back.metadata.truncation);
        assert!(back.answers.is_empty());
    }

    /// A blocked 240-byte name for a client of 512 bytes: with the rule's
    /// text the reply would be 531 bytes. The text goes, the code stays,
    /// and the answer is whole (no TC).
    #[test]
    fn a_long_ede_text_gives_way_to_the_clients_limit() {
        let label = "a".repeat(60);
        let qname = format!("{label}.{label}.{label}.{label}.");
        let c = ClientQuery {
            query: Query::query(Name::from_ascii(&qname).unwrap(), RecordType::A),
            edns_payload: Some(512),
            ..client(true)
        };
        let ede = Ede::new(EDE_BLOCKED, format!("blocked by ||{}^", &qname[..qname.len() - 1]));
        let mut m = local_reply(&c, ResponseCode::NXDomain, Some(&ede));
        // A second EDE with no text of its own stays as it is.
        m.edns.as_mut().unwrap().options_mut().insert(Ede::new(EDE_DNSSEC_BOGUS, "").option());
        assert!(m.to_vec().unwrap().len() > 512);
        let wire = encode_udp(&m, c.udp_limit()).unwrap();
        assert!(wire.len() <= 512, "{}", wire.len());
        let back = Message::from_vec(&wire).unwrap();
        assert!(!back.metadata.truncation);
        assert_eq!(back.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(ede_of(&back), [(EDE_BLOCKED, String::new()), (EDE_DNSSEC_BOGUS, String::new())]);
        // With room for it, the text stays.
        let back = Message::from_vec(&encode_udp(&m, 1232).unwrap()).unwrap();
        assert_eq!(ede_of(&back), [(EDE_BLOCKED, ede.text.clone()), (EDE_DNSSEC_BOGUS, String::new())]);
    }

    #[test]
    fn formerr_from_raw_bytes() {
        assert_eq!(formerr_raw(&[0xab, 0xcd, 0x01, 0x00, 0xff]).unwrap(), [0xab, 0xcd, 0x81, 0x81, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(formerr_raw(&[1, 2, 3]).is_none());
        // Never answer a response.
        assert!(formerr_raw(&[1, 2, 0x80, 0, 0]).is_none());
    }
}
