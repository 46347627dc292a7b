// placeholder: replaced by the real program
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp") int dns_guard(struct xdp_md *ctx) { return XDP_PASS; }
char LICENSE[] SEC("license") = "Dual MIT/GPL";
