//! Compiles a rule set into the kernel's table (see guard_ebpf::table).

use guard_ebpf::table::{self, name_key, Table, TableError};

use super::RuleSet;

/// Hashes every rule with `seed` and builds the bucket table.
pub fn compile(rules: &RuleSet, seed: u64, generation: u64) -> Result<Table, TableError> {
    let entries: Vec<(u64, u8)> = rules.rules.iter().map(|(name, info)| (name_key(name, seed), info.flags)).collect();
    table::build(&entries, seed, generation, table::DEFAULT_LOAD)
}
