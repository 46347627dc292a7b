/* Compiled for the BPF target only so its BTF records how the kernel side
 * lays out every ABI struct; tests/abi.rs compares that with the Rust
 * layout bindgen generated for the host. One global per struct keeps each
 * type in the BTF. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "guard_abi.h"

struct guard_bucket abi_bucket;
struct guard_table_header abi_table_header;
struct guard_config abi_config;
struct guard_rl_key abi_rl_key;
struct guard_rl_state abi_rl_state;
struct guard_dynblock abi_dynblock;
struct guard_event abi_event;
struct guard_scratch abi_scratch;

char LICENSE[] SEC("license") = "Dual MIT/GPL";
