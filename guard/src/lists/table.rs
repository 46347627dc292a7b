//! Compiles a rule set into the kernel's table (see guard_ebpf::table).

use guard_ebpf::table::{self, Entry, Table, TableError};

use super::RuleSet;

/// Hashes every rule (and its Bloom group) with `seed` and builds the table.
pub fn compile(rules: &RuleSet, seed: u64, generation: u64) -> Result<Table, TableError> {
    let entries: Vec<Entry> = rules.rules.iter().map(|(name, info)| Entry::for_name(name, seed, info.flags)).collect();
    table::build(&entries, seed, generation, table::DEFAULT_LOAD)
}
