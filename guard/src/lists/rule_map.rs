//! The rule set's map from a normalized name to its rule, kept compact:
//! every name lives in one shared buffer and the hash table holds 16-byte
//! slots that point into it.
//!
//! Why not `HashMap<String, RuleInfo>`: that was ~170 B a name in a million
//! small allocations, and glibc could not give a reloaded list's heap back,
//! because the new list's strings sat scattered among the old one's freed
//! chunks (300k names: 50 MiB RSS loaded, up to 85 MiB after five reloads,
//! malloc_trim notwithstanding). Here a whole list is three allocations
//! (the name buffer, the table, the list paths) that are freed whole.

use std::fmt;
use std::hash::BuildHasher;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

use super::{Origin, RuleInfo};

/// One name's rule. The name is `names[start..start + len]`; names are at
/// most 253 bytes (`name::NAME_TEXT_MAX`), so `len` fits a byte.
#[derive(Debug, Clone, Copy)]
struct Slot {
    start: u32,
    line: u32,
    /// Index into `RuleMap::lists`.
    list: u32,
    len: u8,
    flags: u8,
    origin_flags: u8,
}

impl Slot {
    fn range(&self) -> Range<usize> {
        let start = self.start as usize;
        start..start + usize::from(self.len)
    }
}

/// The name buffer would pass 4 GiB, which `Slot::start` cannot address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// Normalized name → what the lists say about it (see `RuleInfo`).
#[derive(Clone, Default)]
pub struct RuleMap {
    names: String,
    slots: HashTable<Slot>,
    lists: Vec<Arc<Path>>,
}

/// FxHash: the keys come from files the operator chose, not from the
/// network, so HashDoS resistance buys nothing and SipHash would be a third
/// of the load time on big lists.
fn hash(name: &str) -> u64 {
    FxBuildHasher.hash_one(name)
}

impl RuleMap {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Room for `names` more names of `bytes` bytes in all, so a million-line
    /// list does not rehash or regrow the buffer on the way.
    pub fn reserve(&mut self, names: usize, bytes: usize) {
        let Self { names: buffer, slots, .. } = self;
        slots.reserve(names, |s| hash(&buffer[s.range()]));
        buffer.reserve(bytes);
    }

    /// Gives back the name buffer's over-estimate (a whole line per name);
    /// call once every list is in. The table keeps its size: shrinking it
    /// would rehash every name.
    pub fn shrink_to_fit(&mut self) {
        self.names.shrink_to_fit();
    }

    /// Registers a list file; rules from it are added with the id returned.
    pub fn add_list(&mut self, list: Arc<Path>) -> u32 {
        self.lists.push(list);
        u32::try_from(self.lists.len() - 1).expect("a config names fewer than 4 billion list files")
    }

    /// ORs `flags` into `name`'s rule, creating it with origin `list:line`
    /// when the name is new. Returns the bits the name's first rule gave
    /// when there was one.
    pub fn add(&mut self, name: &str, flags: u8, list: u32, line: u32) -> Result<Option<u8>, Full> {
        let h = hash(name);
        let Self { names: buffer, slots, .. } = self;
        if let Some(slot) = slots.find_mut(h, |s| &buffer[s.range()] == name) {
            slot.flags |= flags;
            return Ok(Some(slot.origin_flags));
        }
        if u32::try_from(buffer.len() + name.len()).is_err() {
            return Err(Full);
        }
        let start = buffer.len() as u32;
        let len = u8::try_from(name.len()).expect("normalized names are at most 253 bytes");
        buffer.push_str(name);
        let slot = Slot { start, line, list, len, flags, origin_flags: flags };
        slots.insert_unique(h, slot, |s| hash(&buffer[s.range()]));
        Ok(None)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    /// The rule on exactly `name` (normalized), if any.
    pub fn get(&self, name: &str) -> Option<RuleInfo> {
        self.find(name).map(|s| RuleInfo {
            flags: s.flags,
            origin: Origin { list: Arc::clone(&self.lists[s.list as usize]), line: s.line },
            origin_flags: s.origin_flags,
        })
    }

    /// Every name with the OR of its rules' flags, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u8)> + '_ {
        self.slots.iter().map(|s| (&self.names[s.range()], s.flags))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.iter().map(|(name, _)| name)
    }

    fn find(&self, name: &str) -> Option<&Slot> {
        self.slots.find(hash(name), |s| &self.names[s.range()] == name)
    }
}

impl fmt::Debug for RuleMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_merge_by_name_and_keep_the_first_origin() {
        let mut map = RuleMap::default();
        let a = map.add_list(Arc::from(Path::new("a.txt")));
        let b = map.add_list(Arc::from(Path::new("b.txt")));
        assert_eq!(map.add("ads.example", 1, a, 3), Ok(None));
        assert_eq!(map.add("other.example", 2, a, 4), Ok(None));
        assert_eq!(map.add("ads.example", 2, b, 9), Ok(Some(1)));
        assert_eq!(map.len(), 2);
        let r = map.get("ads.example").unwrap();
        assert_eq!((r.flags, r.origin_flags, r.origin.line), (3, 1, 3));
        assert_eq!(&*r.origin.list, Path::new("a.txt"));
        assert!(map.contains_key("other.example"));
        assert!(!map.contains_key("ads.exampl"), "a prefix of a stored name is not a name");
        assert!(!map.contains_key("example"));
        let mut all: Vec<_> = map.iter().collect();
        all.sort();
        assert_eq!(all, [("ads.example", 3), ("other.example", 2)]);
    }

    #[test]
    fn growing_past_the_reservation_keeps_every_name_findable() {
        let mut map = RuleMap::default();
        let list = map.add_list(Arc::from(Path::new("t.txt")));
        map.reserve(4, 16);
        for i in 0..10_000u32 {
            map.add(&format!("n{i}.example"), 1, list, i + 1).unwrap();
        }
        map.shrink_to_fit();
        assert_eq!(map.len(), 10_000);
        for i in (0..10_000u32).step_by(997) {
            assert_eq!(map.get(&format!("n{i}.example")).unwrap().origin.line, i + 1);
        }
    }
}
