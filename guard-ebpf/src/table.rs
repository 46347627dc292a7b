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
//!
//! The Bloom filter after the buckets keeps a name's suffixes together: a
//! key of three or more labels sets its bits in the block of its *group*,
//! the key of its last two labels, so a cold name's suffixes all read one
//! block (guard_abi.h). A block that would hold too many keys that way is
//! marked spilled, and the keys of groups homed on it go to their own
//! blocks instead, as every key of one or two labels always does. A group
//! that holds a name of three or more labels also gets a *deep mark* in
//! its block's flags: where the mark is missing, the kernel stops its walk
//! after the name's last two labels.

use crate::abi::{
    guard_bucket, guard_table_header, GUARD_BUCKET_SLOTS, GUARD_LABEL_MAX, GUARD_MAX_LABELS,
    GUARD_MAX_PROBE, GUARD_TABLE_DEEP_MARKS, GUARD_TABLE_MAGIC,
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

/// One name to store: its key, its Bloom group (the key of its last two
/// labels, or its own key when it has fewer than three), whether it is
/// deeper than its group (three or more labels: the group gets a deep mark)
/// and its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub key: u64,
    pub group: u64,
    pub deep: bool,
    pub flags: u8,
}

impl Entry {
    /// The entry of a dotted, normalized name.
    pub fn for_name(dotted: &str, seed: u64, flags: u8) -> Entry {
        let labels: Vec<&str> = dotted.split('.').filter(|l| !l.is_empty()).collect();
        let key = name_key(dotted, seed);
        let deep = labels.len() > 2;
        let group = if deep { name_key(&labels[labels.len() - 2..].join("."), seed) } else { key };
        Entry { key, group, deep, flags }
    }
}

/// The Bloom group of each suffix key (as `suffix_keys` returns them, full
/// name first): the key of the last two labels, or the key itself.
pub fn suffix_groups(keys: &[u64]) -> Vec<u64> {
    let n = keys.len();
    (0..n).map(|i| if n - i > 2 { keys[n - 2] } else { keys[i] }).collect()
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

    /// What the kernel's Bloom check says about `key`, whose group is
    /// `group` (`bloom_may_hold` and its caller in guard_table.h).
    pub fn bloom_may_hold(&self, key: u64, group: u64) -> bool {
        if self.bloom.is_empty() {
            return true;
        }
        let block = &self.bloom[bloom_block_of(key, group, &self.bloom) as usize];
        (0..BLOOM_BITS).all(|i| {
            let bit = bloom_bit(key, i);
            block.keys[(bit >> 6) as usize] >> (bit & 63) & 1 == 1
        })
    }

    /// Whether the kernel's walk goes past the group `group` (the key of a
    /// name's last two labels): false only when the table carries deep
    /// marks and the group's block has none for it, so no name of three
    /// or more labels ends in that group (`BLOOM_LAST_STEP` in guard_table.h).
    pub fn walk_goes_past(&self, group: u64) -> bool {
        if self.header.flags & GUARD_TABLE_DEEP_MARKS == 0 || self.bloom.is_empty() {
            return true;
        }
        let block = &self.bloom[bloom_block(group, self.bloom.len() as u32) as usize];
        u64::from_le_bytes(block.flags) >> deep_bit(group) & 1 == 1
    }

    /// Bytes of table data per stored name (excluding map overhead).
    pub fn bytes_per_name(&self) -> f64 {
        let bytes = self.elements() as f64 * std::mem::size_of::<guard_bucket>() as f64;
        bytes / (self.header.nnames.max(1)) as f64
    }

    /// Looks a key up the way the kernel does; for tests and `check`.
    pub fn lookup(&self, key: u64, group: u64) -> Option<u8> {
        if !self.bloom_may_hold(key, group) {
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
/// Keys a block may take through groups before it spills: 1.5x the mean,
/// about 8 % false positives there at worst (3 % at the mean). A hosts
/// list's thousands of names under one ad domain would otherwise fill its
/// block and make every name under that domain probe the buckets.
const BLOOM_GROUP_MAX: usize = NAMES_PER_BLOOM_BLOCK * 3 / 2;
/// `guard_bucket.flags[0]` of a spilled Bloom block (GUARD_BLOOM_SPILLED).
const BLOOM_SPILLED: u8 = crate::abi::GUARD_BLOOM_SPILLED as u8;

/// The block `key` is tested in: its group's, unless that block spilled.
fn bloom_block_of(key: u64, group: u64, bloom: &[guard_bucket]) -> u32 {
    let blocks = bloom.len() as u32;
    let g = bloom_block(group, blocks);
    if bloom[g as usize].flags[0] & BLOOM_SPILLED != 0 {
        bloom_block(key, blocks)
    } else {
        g
    }
}

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

/// Same as `guard_deep_bit()` in guard_hash.h: the group's bit in its
/// block's flags word.
#[inline]
pub fn deep_bit(group: u64) -> u32 {
    8 + (((group & 0xffff) * 56) >> 16) as u32
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

/// Builds a table from entries. Flags of equal keys are merged.
pub fn build(entries: &[Entry], seed: u64, generation: u64, load: f64) -> Result<Table, TableError> {
    if entries.len() > (u32::MAX / 16) as usize {
        return Err(TableError::TooLarge(entries.len()));
    }
    let mut sorted: Vec<(u64, u8)> = entries.iter().map(|e| (to_key(e.key), e.flags)).collect();
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
    let bloom = build_bloom(entries, sorted.len());
    Ok(build_sorted(sorted, merged, seed, generation, nbuckets, bloom))
}

/// Builds with a given number of home buckets (grown only if a key would
/// land too far from home): lets tests crowd a table on purpose.
pub fn build_with_home_buckets(entries: &[Entry], seed: u64, generation: u64, nbuckets: u32) -> Table {
    let mut sorted: Vec<(u64, u8)> = entries.iter().map(|e| (to_key(e.key), e.flags)).collect();
    sorted.sort_unstable_by_key(|&(k, _)| k);
    sorted.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 |= later.1;
        }
        same
    });
    let bloom = build_bloom(entries, sorted.len());
    build_sorted(sorted, 0, seed, generation, nbuckets.max(1), bloom)
}

/// The Bloom blocks for `entries` (`distinct` of them after merging): the
/// blocks of groups that would take more than BLOOM_GROUP_MAX keys are
/// marked spilled first, then every key sets its bits where the kernel
/// will test them, and every group with a deeper name gets its deep mark
/// in its own block (flags bits 8..63, which spilling leaves alone). Built
/// from all entries, not the merged ones, so two names of one key but
/// different groups are both found and marked.
fn build_bloom(entries: &[Entry], distinct: usize) -> Vec<guard_bucket> {
    let empty = guard_bucket { keys: [0; SLOTS], flags: [0; SLOTS] };
    let nblocks = distinct.div_ceil(NAMES_PER_BLOOM_BLOCK);
    let mut bloom = vec![empty; nblocks];
    if nblocks == 0 {
        return bloom;
    }
    let mut load = vec![0usize; nblocks];
    for e in entries {
        load[bloom_block(to_key(e.group), nblocks as u32) as usize] += 1;
    }
    for (block, &n) in bloom.iter_mut().zip(&load) {
        if n > BLOOM_GROUP_MAX {
            block.flags[0] = BLOOM_SPILLED;
        }
    }
    for e in entries {
        let key = to_key(e.key);
        let b = bloom_block_of(key, to_key(e.group), &bloom) as usize;
        for i in 0..BLOOM_BITS {
            let bit = bloom_bit(key, i);
            bloom[b].keys[(bit >> 6) as usize] |= 1 << (bit & 63);
        }
        if e.deep {
            let group = to_key(e.group);
            let block = &mut bloom[bloom_block(group, nblocks as u32) as usize];
            let bit = deep_bit(group);
            block.flags[(bit / 8) as usize] |= 1 << (bit % 8);
        }
    }
    bloom
}

fn build_sorted(
    sorted: Vec<(u64, u8)>,
    merged: usize,
    seed: u64,
    generation: u64,
    mut nbuckets: u32,
    bloom: Vec<guard_bucket>,
) -> Table {
    loop {
        if let Some(mut table) = place(&sorted, seed, generation, nbuckets, &bloom) {
            table.merged_collisions = merged;
            return table;
        }
        // A run longer than the kernel probes: spread the homes out.
        nbuckets += nbuckets / 16 + 1;
    }
}

/// Places sorted, distinct keys; `None` if one lands too far from home.
fn place(sorted: &[(u64, u8)], seed: u64, generation: u64, nbuckets: u32, bloom: &[guard_bucket]) -> Option<Table> {
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
    let header = guard_table_header {
        magic: GUARD_TABLE_MAGIC,
        seed,
        nbuckets,
        max_probe,
        nnames: sorted.len() as u64,
        generation,
        bloom_first: 1 + total_buckets as u32,
        bloom_blocks: bloom.len() as u32,
        flags: if bloom.is_empty() { 0 } else { GUARD_TABLE_DEEP_MARKS },
        _pad: [0; 20],
    };
    Some(Table { header, buckets, bloom: bloom.to_vec(), merged_collisions: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry that is its own Bloom group (a name of one or two labels).
    fn own(key: u64, flags: u8) -> Entry {
        Entry { key, group: key, deep: false, flags }
    }

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
        // One group far over BLOOM_GROUP_MAX: its block spills, and its
        // keys fall back to a block each.
        let entries: Vec<Entry> = (0..100_000u64).map(|i| Entry::for_name(&format!("n{i}.bloom.test"), 3, 1)).collect();
        let table = build(&entries, 3, 1, DEFAULT_LOAD).unwrap();
        assert_eq!(table.header.bloom_first, 1 + table.buckets.len() as u32);
        assert_eq!(table.header.bloom_blocks as usize, table.bloom.len());
        assert!(entries.iter().all(|e| table.bloom_may_hold(e.key, e.group)), "a false negative");
        let group = name_key("bloom.test", 3);
        assert_ne!(table.bloom[bloom_block(group, table.bloom.len() as u32) as usize].flags[0] & BLOOM_SPILLED, 0);
        let absent = (0..100_000u64)
            .filter(|i| table.bloom_may_hold(name_key(&format!("a{i}.bloom.test"), 3), group))
            .count();
        let rate = absent as f64 / 100_000.0;
        assert!(rate < 0.06, "false positive rate {rate}");
        let per_name = table.bloom.len() as f64 * 72.0 / entries.len() as f64;
        assert!(per_name < 1.2, "{per_name} bytes of Bloom filter per name");
    }

    #[test]
    fn grouped_bloom_finds_every_name_and_rules_out_most_others() {
        // Groups of very different sizes, as in real lists: many small
        // ones, some hot ad domains with thousands of names.
        let mut entries = Vec::new();
        let mut x = 7u64;
        for g in 0..3000u64 {
            x = fmix64(x);
            let size = if g % 500 == 0 { 3000 } else { x % 40 + 1 };
            for i in 0..size {
                entries.push(Entry::for_name(&format!("h{i}.g{g}.example"), 9, 1));
            }
            entries.push(Entry::for_name(&format!("g{g}.example"), 9, 2));
        }
        entries.push(Entry::for_name("example", 9, 2));
        let table = build(&entries, 9, 1, DEFAULT_LOAD).unwrap();
        assert!(table.bloom.iter().any(|b| b.flags[0] & BLOOM_SPILLED != 0), "no block spilled");
        assert!(table.bloom.iter().any(|b| b.flags[0] & BLOOM_SPILLED == 0), "every block spilled");
        for e in &entries {
            assert_eq!(table.lookup(e.key, e.group), Some(e.flags), "{e:?} not found");
        }
        // Absent names under the same groups (hot and small) and new ones,
        // looked up suffix by suffix as the kernel walks them.
        let (mut tested, mut passed) = (0usize, 0usize);
        for i in 0..30_000u64 {
            let name = match i % 3 {
                0 => format!("a{i}.g{}.example", i % 3000),
                1 => format!("w.a{i}.g{}.example", i % 3000),
                _ => format!("a{i}.new{i}.example"),
            };
            let keys = suffix_keys(&wire(&name), 9).unwrap();
            let groups = suffix_groups(&keys);
            for (j, (&k, &g)) in keys.iter().zip(&groups).enumerate() {
                let labels = keys.len() - j;
                if labels == 1 || (labels == 2 && !name.contains("new")) {
                    continue; // "example" and g<N>.example are in the table
                }
                tested += 1;
                passed += table.bloom_may_hold(k, g) as usize;
            }
        }
        let rate = passed as f64 / tested as f64;
        assert!(rate < 0.06, "false positive rate {rate} over {tested} absent suffixes");
        assert!(table.bytes_per_name() < 12.0, "{} bytes per name", table.bytes_per_name());
    }

    #[test]
    fn every_group_with_a_deeper_name_is_marked_and_most_others_are_not() {
        // 20,000 listed groups, every other one with names below it (as in
        // "ads.g0.example"), and 20,000 groups not listed at all.
        let group = |g: u32| format!("g{g}.example");
        let mut entries = Vec::new();
        for g in 0..20_000 {
            entries.push(Entry::for_name(&group(g), 5, 1));
            if g % 2 == 0 {
                entries.push(Entry::for_name(&format!("ads.{}", group(g)), 5, 1));
            }
        }
        let table = build(&entries, 5, 1, DEFAULT_LOAD).unwrap();
        assert_ne!(table.header.flags & GUARD_TABLE_DEEP_MARKS, 0);
        let mut false_marks = 0;
        for g in 0..40_000 {
            let key = name_key(&group(g), 5);
            if g < 20_000 && g % 2 == 0 {
                assert!(table.walk_goes_past(key), "{} has a deeper name but no mark", group(g));
            } else {
                false_marks += table.walk_goes_past(key) as usize;
            }
        }
        // 10,000 marks in 469 blocks, one of 56 bits each: about 1 in 3 of
        // the other groups walks on for nothing (and loses nothing).
        let rate = false_marks as f64 / 30_000.0;
        assert!(rate < 0.4, "{rate} of unmarked groups read as marked");
        // Spilling uses flags[0] bit 0 only; marks never touch it.
        assert!(table.bloom.iter().all(|b| b.flags[0] & !BLOOM_SPILLED == 0));
    }

    #[test]
    fn a_table_without_a_bloom_filter_has_no_deep_marks() {
        let table = build(&[], 5, 1, DEFAULT_LOAD).unwrap();
        assert_eq!(table.header.flags & GUARD_TABLE_DEEP_MARKS, 0);
        assert!(table.walk_goes_past(name_key("any.example", 5)));
    }

    #[test]
    fn suffix_groups_are_the_groups_of_the_names() {
        for name in ["com", "example.com", "www.example.com", "a.b.c.example.com"] {
            let keys = suffix_keys(&wire(name), 4).unwrap();
            let groups = suffix_groups(&keys);
            let labels: Vec<&str> = name.split('.').collect();
            for i in 0..labels.len() {
                let e = Entry::for_name(&labels[i..].join("."), 4, 1);
                assert_eq!((keys[i], groups[i]), (e.key, e.group), "{name}, suffix {i}");
            }
        }
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
        let entries: Vec<Entry> =
            (0..50_000u64).map(|i| Entry::for_name(&format!("n{i}.test"), 5, (i % 63) as u8 + 1)).collect();
        let table = build(&entries, 5, 1, DEFAULT_LOAD).unwrap();
        assert_eq!(table.header.nnames, 50_000);
        assert!(table.header.max_probe <= GUARD_MAX_PROBE);
        for e in &entries {
            assert_eq!(table.lookup(e.key, e.group), Some(e.flags));
        }
        for i in 0..50_000u64 {
            let k = name_key(&format!("absent{i}.test"), 5);
            assert_eq!(table.lookup(k, k), None);
        }
        assert!(table.bytes_per_name() < 12.0, "{} bytes per name", table.bytes_per_name());
    }

    #[test]
    fn equal_keys_merge_their_flags() {
        let table = build(&[own(42, 1), own(42, 2)], 0, 1, DEFAULT_LOAD).unwrap();
        assert_eq!(table.lookup(42, 42), Some(3));
        assert_eq!(table.merged_collisions, 1);
    }

    #[test]
    fn an_empty_table_is_valid() {
        let table = build(&[], 0, 1, DEFAULT_LOAD).unwrap();
        assert_eq!(table.header.nbuckets, 1);
        assert_eq!(table.lookup(1234, 1234), None);
    }

    #[test]
    fn one_million_names_fit_in_twelve_bytes_each() {
        let entries: Vec<Entry> = (0..1_000_000u64).map(|i| own(fmix64(i ^ 0xabc), 1)).collect();
        let table = build(&entries, 0, 1, DEFAULT_LOAD).unwrap();
        // Buckets about 10.6 bytes per name, the Bloom filter about 1.1: the goal is 12.
        assert!(table.bytes_per_name() <= 12.0, "{} bytes per name", table.bytes_per_name());
        assert!(table.header.max_probe <= GUARD_MAX_PROBE);
        for e in entries.iter().step_by(97) {
            assert_eq!(table.lookup(e.key, e.group), Some(1));
        }
    }

    #[test]
    fn keys_are_sorted_across_the_whole_table() {
        let entries: Vec<Entry> = (0..10_000u64).map(|i| own(fmix64(i), 1)).collect();
        let table = build(&entries, 0, 1, DEFAULT_LOAD).unwrap();
        let keys: Vec<u64> = table.buckets.iter().flat_map(|b| b.keys).filter(|&k| k != 0).collect();
        assert_eq!(keys.len(), 10_000);
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_zero_hash_is_stored_as_one() {
        let table = build(&[own(0, 4)], 0, 1, DEFAULT_LOAD).unwrap();
        assert_eq!(table.lookup(1, 1), Some(4));
    }
}
