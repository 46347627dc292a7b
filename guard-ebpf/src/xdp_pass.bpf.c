/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * xdp_pass.bpf.c - an XDP program that does nothing. The benchmark runs it
 * beside dns_guard, in the same modes and rounds, so BPF_PROG_TEST_RUN's
 * own cost (timer, context setup, syscall) can be subtracted: the floor.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
