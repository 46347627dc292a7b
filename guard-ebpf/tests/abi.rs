//! The Rust and C views of guard_abi.h must agree byte for byte.
//!
//! bindgen generates the Rust structs from the header as the host compiler
//! sees it; the XDP program is compiled for the BPF target. This test reads
//! the BTF that clang emitted for the BPF target (via `bpftool btf dump`)
//! and checks every struct's size and every member's offset against Rust.

use std::{collections::HashMap, mem::offset_of, process::Command};

use guard_ebpf::abi::*;

/// (size, member name -> byte offset) of each struct in the BPF object.
fn btf_layouts() -> HashMap<String, (usize, HashMap<String, usize>)> {
    let object = env!("GUARD_ABI_CHECK_OBJECT");
    let out = Command::new("bpftool")
        .args(["btf", "dump", "file", object, "format", "raw"])
        .output()
        .expect("running bpftool (installed by scripts/setup.sh)");
    assert!(out.status.success(), "bpftool failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut layouts = HashMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with('[') {
            current = None;
            if let Some(rest) = line.split_once("] STRUCT '").map(|(_, r)| r) {
                let (name, tail) = rest.split_once('\'').unwrap();
                let size = tail.split_whitespace().find_map(|f| f.strip_prefix("size=")).unwrap().parse().unwrap();
                layouts.insert(name.to_string(), (size, HashMap::new()));
                current = Some(name.to_string());
            }
        } else if let (Some(name), Some(member)) = (&current, line.trim().strip_prefix('\'')) {
            let (field, tail) = member.split_once('\'').unwrap();
            let bits: usize = tail.split_whitespace().find_map(|f| f.strip_prefix("bits_offset=")).unwrap().parse().unwrap();
            layouts.get_mut(name).unwrap().1.insert(field.to_string(), bits / 8);
        }
    }
    layouts
}

macro_rules! rust_layout {
    ($ty:ident { $($field:ident),+ $(,)? }) => {
        (stringify!($ty), std::mem::size_of::<$ty>(), vec![$((stringify!($field), offset_of!($ty, $field))),+])
    };
}

#[test]
fn rust_and_bpf_layouts_agree() {
    let btf = btf_layouts();
    let rust = [
        rust_layout!(guard_bucket { keys, flags }),
        rust_layout!(guard_table_header { magic, seed, nbuckets, max_probe, nnames, generation, bloom_first, bloom_blocks, flags, _pad }),
        rust_layout!(guard_config { abi_version, block_action, rl_action, ipv4_prefix, ipv6_prefix, rl_qps, rl_burst, ports, nports, allow_sample, dynblocks }),
        rust_layout!(guard_dynblock { expires_ns, action, _pad }),
        rust_layout!(guard_rl_key { family, _pad, addr }),
        rust_layout!(guard_rl_state { tat_ns }),
        rust_layout!(guard_event { ts_ns, rule_id, client_addr, client_port, qtype, qname_len, family, verdict, action, reason, _pad, qname }),
    ];
    for (name, size, fields) in rust {
        let (btf_size, btf_fields) = btf.get(name).unwrap_or_else(|| panic!("struct {name} missing from the BPF object's BTF"));
        assert_eq!(size, *btf_size, "size of struct {name}: Rust {size}, BPF {btf_size}");
        assert_eq!(fields.len(), btf_fields.len(), "struct {name}: Rust has {:?}, BPF has {:?}", fields, btf_fields);
        for (field, offset) in fields {
            assert_eq!(Some(&offset), btf_fields.get(field), "offset of {name}.{field}: Rust {offset}, BPF {:?}", btf_fields.get(field));
        }
    }
}

#[test]
fn table_header_is_exactly_one_bucket() {
    // The header is element 0 of the same array as the buckets.
    assert_eq!(std::mem::size_of::<guard_table_header>(), std::mem::size_of::<guard_bucket>());
}

#[test]
fn scratch_matches_between_targets() {
    let btf = btf_layouts();
    let (size, _) = btf["guard_scratch"];
    assert_eq!(size, std::mem::size_of::<guard_scratch>());
}
