//! The kernel's name table, built in userspace.
//!
//! The layout is defined in `guard_abi.h` (8 64-bit keys and 8 flag bytes
//! per bucket, a header in element 0) and the hash in `guard_hash.h`; this
//! module is the Rust half of both. Keys are placed in ascending order, each
//! at the first free slot at or after its home bucket, with no wrap-around:
//! the table is sorted, so a kernel lookup stops at the first empty slot or
//! larger key. The XDP program probes at most `max_probe + 1` buckets, so
//! the builder grows the table until every key sits within
//! `GUARD_MAX_PROBE` buckets of its home: the kernel never misses a name.

use crate::abi::{
    guard_bucket, guard_table_header, GUARD_BUCKET_SLOTS, GUARD_LABEL_MAX, GUARD_MAX_LABELS,
    GUARD_MAX_PROBE, GUARD_TABLE_MAGIC,
};

const K1: u64 = 0x9e37_79b9_7f4a_7c15;
const SLOTS: usize = GUARD_BUCKET_SLOTS as usize;

/// Target fill of the home buckets: 72 B / 8 slots / 0.85 = 10.6 bytes per
/// name, and a miss still ends in its home bucket nearly every time.
pub const DEFAULT_LOAD: f64 = 0.85;

#[inline]
fn lower8(w: u64) -> u64 {
    let heptets = w & 0x7f7f_7f7f_7f7f_7f7f;
    let ge_a = heptets + 0x3f3f_3f3f_3f3f_3f3f;
    let gt_z = heptets + 0x2525_2525_2525_2525;
    let upper = ge_a & !gt_z & !w & 0x8080_8080_8080_8080;
    w | (upper >> 2)
}

#[inline]
fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[inline]
fn hash_word(h: u64, w: u64) -> u64 {
    let h = (h ^ w).wrapping_mul(K1);
    h ^ (h >> 32)
}

/// Folds one label (without its length byte) into the suffix state `h`,
/// exactly as the kernel does: the length byte leads the first word.
#[inline]
fn hash_label(mut h: u64, label: &[u8]) -> u64 {
    // The wire form of the label: length byte, then the bytes.
    let total = label.len() + 1;
    let mut j = 0;
    while j < total {
        let mut buf = [0u8; 8];
        for (b, slot) in buf.iter_mut().enumerate() {
            let i = j + b;
            if i >= total {
                break;
            }
            *slot = if i == 0 { label.len() as u8 } else { label[i - 1] };
        }
        h = hash_word(h, lower8(u64::from_le_bytes(buf)));
        j += 8;
    }
    fmix64(h)
}

#[inline]
fn to_key(h: u64) -> u64 {
    if h == 0 {
        1
    } else {
        h
    }
}

/// The table key of a dotted name ("www.example.com", no trailing dot,
/// already normalized): the key the kernel computes for the full qname.
pub fn name_key(dotted: &str, seed: u64) -> u64 {
    let h = dotted
        .rsplit('.')
        .filter(|l| !l.is_empty())
        .fold(seed, |h, label| hash_label(h, label.as_bytes()));
    to_key(h)
}

/// Keys of every suffix of a wire-format name, the full name first, or
/// `None` if the name is not valid uncompressed wire format.
pub fn suffix_keys(wire: &[u8], seed: u64) -> Option<Vec<u64>> {
    let mut labels: Vec<&[u8]> = Vec::new();
    let mut off = 0usize;
    loop {
        let len = *wire.get(off)? as usize;
        if len == 0 {
            break;
        }
        if len > GUARD_LABEL_MAX as usize || labels.len() >= GUARD_MAX_LABELS as usize {
            return None;
        }
        labels.push(wire.get(off + 1..off + 1 + len)?);
        off += 1 + len;
    }
    let mut keys = vec![0; labels.len()];
    let mut h = seed;
    for (i, label) in labels.iter().enumerate().rev() {
        h = hash_label(h, label);
        keys[i] = to_key(h);
    }
    Some(keys)
}

/// A table ready to be copied into an inner map: element 0 is the header,
/// elements 1..=nbuckets the buckets.
pub struct Table {
    pub header: guard_table_header,
    pub buckets: Vec<guard_bucket>,
    /// The Bloom filter's blocks, after the buckets (see guard_abi.h).
    pub bloom: Vec<guard_bucket>,
    /// Distinct names whose 64-bit keys collided and were merged.
    pub merged_collisions: usize,
}

impl Table {
    /// Elements of the inner array map: the header, the buckets, the Bloom blocks.
    pub fn elements(&self) -> u32 {
        1 + self.buckets.len() as u32 + self.bloom.len() as u32
    }

    /// What the kernel's Bloom check says about `key` (`bloom_may_hold`).
    pub fn bloom_may_hold(&self, key: u64) -> bool {
        if self.bloom.is_empty() {
            return true;
        }
        let block = &self.bloom[bloom_block(key, self.bloom.len() as u32) as usize];
        (0..BLOOM_BITS).all(|i| {
            let bit = bloom_bit(key, i);
            block.keys[(bit >> 6) as usize] >> (bit & 63) & 1 == 1
        })
    }

    /// Bytes of table data per stored name (excluding map overhead).
    pub fn bytes_per_name(&self) -> f64 {
        let bytes = self.elements() as f64 * std::mem::size_of::<guard_bucket>() as f64;
        bytes / (self.header.nnames.max(1)) as f64
    }

    /// Looks a key up the way the kernel does; for tests and `check`.
    pub fn lookup(&self, key: u64) -> Option<u8> {
        if !self.bloom_may_hold(key) {
            return None;
        }
        let home = home_bucket(key, self.header.nbuckets) as usize;
        for bucket in self.buckets.iter().skip(home).take(self.header.max_probe as usize + 1) {
            for s in 0..SLOTS {
                let k = bucket.keys[s];
                if k == key {
                    return Some(bucket.flags[s]);
                }
                if k == 0 || k > key {
                    return None;
                }
            }
        }
        None
    }

    /// The whole table as the bytes of the inner map's value area.
    pub fn as_bytes(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(pod_bytes(&self.header))
            .chain(self.buckets.iter().map(pod_bytes))
            .chain(self.bloom.iter().map(pod_bytes))
    }
}

fn pod_bytes<T: aya::Pod>(v: &T) -> &[u8] {
    // SAFETY: T is Pod: plain bytes with explicit padding, no invalid states.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// Bits a key sets in its Bloom block.
const BLOOM_BITS: u32 = 3;
/// Names per 512-bit Bloom block: 8 bits per name, about 3 % false
/// positives with 3 bits set per name.
const NAMES_PER_BLOOM_BLOCK: usize = 64;

/// Same as `guard_bloom_block()` in guard_hash.h.
#[inline]
pub fn bloom_block(key: u64, blocks: u32) -> u32 {
    (((key & 0xffff_ffff) * blocks as u64) >> 32) as u32
}

/// Same as `guard_bloom_bit()` in guard_hash.h.
#[inline]
pub fn bloom_bit(key: u64, i: u32) -> u32 {
    (key >> (32 + 9 * i)) as u32 & 511
}

/// Same as `guard_home_bucket()` in guard_hash.h (0-based).
#[inline]
pub fn home_bucket(key: u64, nbuckets: u32) -> u32 {
    (((key >> 32) * nbuckets as u64) >> 32) as u32
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{0} names do not fit in one kernel table (at most {max})", max = u32::MAX / 16)]
    TooLarge(usize),
}

/// Builds a table from `(key, flags)` pairs. Flags of equal keys are merged.
pub fn build(entries: &[(u64, u8)], seed: u64, generation: u64, load: f64) -> Result<Table, TableError> {
    if entries.len() > (u32::MAX / 16) as usize {
        return Err(TableError::TooLarge(entries.len()));
    }
    let mut sorted: Vec<(u64, u8)> = entries.iter().map(|&(k, f)| (to_key(k), f)).collect();
    sorted.sort_unstable_by_key(|&(k, _)| k);
    let mut merged = 0usize;
    sorted.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 |= later.1;
            merged += 1;
        }
        same
    });

    let nbuckets = (sorted.len() as f64 / load / SLOTS as f64).ceil().max(1.0) as u32;
    Ok(build_sorted(sorted, merged, seed, generation, nbuckets))
}

/// Builds with a given number of home buckets (grown only if a key would
/// land too far from home): lets tests crowd a table on purpose.
pub fn build_with_home_buckets(entries: &[(u64, u8)], seed: u64, generation: u64, nbuckets: u32) -> Table {
    let mut sorted: Vec<(u64, u8)> = entries.iter().map(|&(k, f)| (to_key(k), f)).collect();
    sorted.sort_unstable_by_key(|&(k, _)| k);
    sorted.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 |= later.1;
        }
        same
    });
    build_sorted(sorted, 0, seed, generation, nbuckets.max(1))
}

fn build_sorted(sorted: Vec<(u64, u8)>, merged: usize, seed: u64, generation: u64, mut nbuckets: u32) -> Table {
    loop {
        if let Some(mut table) = place(&sorted, seed, generation, nbuckets) {
            table.merged_collisions = merged;
            return table;
        }
        // A run longer than the kernel probes: spread the homes out.
        nbuckets += nbuckets / 16 + 1;
    }
}

/// Places sorted, distinct keys; `None` if one lands too far from home.
fn place(sorted: &[(u64, u8)], seed: u64, generation: u64, nbuckets: u32) -> Option<Table> {
    let mut slots_used = 0usize; // next free slot position, in slots
    let mut positions = Vec::with_capacity(sorted.len());
    let mut max_probe = 0u32;
    for &(key, _) in sorted {
        let home = home_bucket(key, nbuckets) as usize;
        let pos = slots_used.max(home * SLOTS);
        let displacement = (pos / SLOTS - home) as u32;
        if displacement > GUARD_MAX_PROBE {
            return None;
        }
        max_probe = max_probe.max(displacement);
        positions.push(pos);
        slots_used = pos + 1;
    }
    let total_buckets = (nbuckets as usize).max(slots_used.div_ceil(SLOTS));
    let empty = guard_bucket { keys: [0; SLOTS], flags: [0; SLOTS] };
    let mut buckets = vec![empty; total_buckets];
    for (&(key, flags), pos) in sorted.iter().zip(positions) {
        let bucket = &mut buckets[pos / SLOTS];
        bucket.keys[pos % SLOTS] = key;
        bucket.flags[pos % SLOTS] = flags;
    }
    let nblocks = sorted.len().div_ceil(NAMES_PER_BLOOM_BLOCK);
    let mut bloom = vec![empty; nblocks];
    for &(key, _) in sorted {
        let block = &mut bloom[bloom_block(key, nblocks as u32) as usize];
        for i in 0..BLOOM_BITS {
            let bit = bloom_bit(key, i);
            block.keys[(bit >> 6) as usize] |= 1 << (bit & 63);
        }
    }
    let header = guard_table_header {
        magic: GUARD_TABLE_MAGIC,
        seed,
        nbuckets,
        max_probe,
        nnames: sorted.len() as u64,
        generation,
        bloom_first: 1 + total_buckets as u32,
        bloom_blocks: nblocks as u32,
        _pad: [0; 24],
    };
    Some(Table { header, buckets, bloom, merged_collisions: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for l in name.split('.').filter(|l| !l.is_empty()) {
            out.push(l.len() as u8);
            out.extend_from_slice(l.as_bytes());
        }
        out.push(0);
        out
    }

    #[test]
    fn rust_hash_matches_the_c_reference() {
        let mut names = vec![
            "a".to_string(),
            "example.com".into(),
            "WWW.Example.COM".into(),
            "exactly-eight.x".into(),
            "sixteen-bytes-ab.cd".into(),
            format!("{}.{}.{}.{}", "a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61)),
        ];
        // Deterministic pseudo-random names over the whole label alphabet.
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..2000 {
            let mut name = String::new();
            x = fmix64(x);
            for l in 0..(x % 6 + 1) {
                if l > 0 {
                    name.push('.');
                }
                x = fmix64(x.wrapping_add(l));
                for c in 0..(x % 40 + 1) {
                    let v = fmix64(x ^ c) % 38;
                    name.push(b"abcdefghijklmnopqrstuvwxyzABCDEFGH0-_9"[v as usize] as char);
                }
            }
            names.push(name);
        }
        for (i, name) in names.iter().enumerate() {
            let seed = fmix64(i as u64);
            let w = wire(name);
            let ours = suffix_keys(&w, seed).unwrap();
            let reference = crate::reference_suffix_keys(&w, seed).unwrap();
            assert_eq!(ours, reference, "suffix keys differ for {name}");
            assert_eq!(ours[0], name_key(&name.to_ascii_lowercase(), seed), "name_key differs for {name}");
        }
    }

    #[test]
    fn bloom_never_rules_out_a_stored_key_and_rarely_passes_an_absent_one() {
        let entries: Vec<(u64, u8)> = (0..100_000u64).map(|i| (name_key(&format!("n{i}.bloom.test"), 3), 1)).collect();
        let table = build(&entries, 3, 1, DEFAULT_LOAD).unwrap();
        assert_eq!(table.header.bloom_first, 1 + table.buckets.len() as u32);
        assert_eq!(table.header.bloom_blocks as usize, table.bloom.len());
        assert!(entries.iter().all(|&(k, _)| table.bloom_may_hold(to_key(k))), "a false negative");
        let absent = (0..100_000u64).filter(|i| table.bloom_may_hold(name_key(&format!("a{i}.other.test"), 3))).count();
        let rate = absent as f64 / 100_000.0;
        assert!(rate < 0.06, "false positive rate {rate}");
        let per_name = table.bloom.len() as f64 * 72.0 / entries.len() as f64;
        assert!(per_name < 1.2, "{per_name} bytes of Bloom filter per name");
    }

    #[test]
    fn case_does_not_change_the_key() {
        assert_eq!(name_key("example.com", 7), suffix_keys(&wire("EXAMPLE.Com"), 7).unwrap()[0]);
    }

    #[test]
    fn suffix_keys_are_the_keys_of_the_suffixes() {
        let keys = suffix_keys(&wire("a.b.example.com"), 99).unwrap();
        assert_eq!(keys.len(), 4);
        assert_eq!(keys[1], name_key("b.example.com", 99));
        assert_eq!(keys[3], name_key("com", 99));
    }

    #[test]
    fn every_stored_key_is_found_and_absent_keys_are_not() {
        let entries: Vec<(u64, u8)> = (0..50_000u64).map(|i| (name_key(&format!("n{i}.test"), 5), (i % 63) as u8 + 1)).collect();
        let table = build(&entries, 5, 1, DEFAULT_LOAD).unwrap();
        assert_eq!(table.header.nnames, 50_000);
        assert!(table.header.max_probe <= GUARD_MAX_PROBE);
        for &(k, f) in &entries {
            assert_eq!(table.lookup(k), Some(f));
        }
        for i in 0..50_000u64 {
            assert_eq!(table.lookup(name_key(&format!("absent{i}.test"), 5)), None);
        }
        assert!(table.bytes_per_name() < 12.0, "{} bytes per name", table.bytes_per_name());
    }

    #[test]
    fn equal_keys_merge_their_flags() {
        let table = build(&[(42, 1), (42, 2)], 0, 1, DEFAULT_LOAD).unwrap();
        assert_eq!(table.lookup(42), Some(3));
        assert_eq!(table.merged_collisions, 1);
    }

    #[test]
    fn an_empty_table_is_valid() {
        let table = build(&[], 0, 1, DEFAULT_LOAD).unwrap();
        assert_eq!(table.header.nbuckets, 1);
        assert_eq!(table.lookup(1234), None);
    }

    #[test]
    fn one_million_names_fit_in_twelve_bytes_each() {
        let entries: Vec<(u64, u8)> = (0..1_000_000u64).map(|i| (fmix64(i ^ 0xabc), 1)).collect();
        let table = build(&entries, 0, 1, DEFAULT_LOAD).unwrap();
        // Buckets about 10.6 bytes per name, the Bloom filter about 1.1: the goal is 12.
        assert!(table.bytes_per_name() <= 12.0, "{} bytes per name", table.bytes_per_name());
        assert!(table.header.max_probe <= GUARD_MAX_PROBE);
        for &(k, _) in entries.iter().step_by(97) {
            assert_eq!(table.lookup(k), Some(1));
        }
    }

    #[test]
    fn keys_are_sorted_across_the_whole_table() {
        let entries: Vec<(u64, u8)> = (0..10_000u64).map(|i| (fmix64(i), 1)).collect();
        let table = build(&entries, 0, 1, DEFAULT_LOAD).unwrap();
        let keys: Vec<u64> = table.buckets.iter().flat_map(|b| b.keys).filter(|&k| k != 0).collect();
        assert_eq!(keys.len(), 10_000);
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_zero_hash_is_stored_as_one() {
        let table = build(&[(0, 4)], 0, 1, DEFAULT_LOAD).unwrap();
        assert_eq!(table.lookup(1), Some(4));
    }
}
