/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * guard_ratelimit.h - per client-prefix rate limit, GCRA (a token bucket
 * kept as one "theoretical arrival time" word, so an update is one CAS).
 * Clients are grouped by prefix as in dnsdist's MaxQPSIPRule and xdp-dnsrrl:
 * /32 and /64 by default (dnsdist's), so one budget per address; a wider
 * ipv4_prefix/ipv6_prefix (a /24 or /48) makes rotating through the
 * addresses of one network no help.
 */
#ifndef GUARD_RATELIMIT_H
#define GUARD_RATELIMIT_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "guard_abi.h"
#include "guard_maps.h"
#include "pckt_parsing.h"

#define GUARD_NSEC_PER_SEC 1000000000ULL
/* The limiter's clock is bpf_ktime_get_coarse_ns() (CLOCK_MONOTONIC_COARSE,
 * kernel >= 5.11): it stands still for a tick (1-10 ms, CONFIG_HZ >= 100)
 * and costs a load, where bpf_ktime_get_ns() reads the TSC, about 27 ns of
 * a ~240 ns query here (docs/benchmarks.md). While the clock stands still
 * no budget refills, so the tolerance gets one longest tick on top: without
 * it a client with a period shorter than a tick (qps > HZ) and a small
 * burst would get one query per tick. The long-run rate is unchanged; the
 * burst grows by at most qps / 100 queries. */
#define GUARD_RL_TICK_SLACK_NS 10000000ULL

/* Network-order mask for the 32-bit address word that starts at bit `lo`
 * of a `prefix`-bit prefix. Whole words, not bytes: a per-byte mask makes
 * three verifier paths per byte, 3^16 for an IPv6 key. */
static __always_inline __u32 prefix_word_mask(int prefix, int lo)
{
	int bits = prefix - lo;

	if (bits <= 0)
		return 0;
	if (bits >= 32)
		return ~0U;
	return bpf_htonl(~0U << (32 - bits));
}

static __always_inline void rl_key_init(struct guard_rl_key *key,
					const struct guard_config *cfg,
					const struct packet_description *pd)
{
	__u32 addr[4], *out = (__u32 *)key->addr;
	int prefix, i, words;

	__builtin_memcpy(addr, pd->client_addr, sizeof(addr));
	if (pd->family == GUARD_FAMILY_IPV4) {
		prefix = cfg->ipv4_prefix > 32 ? 32 : cfg->ipv4_prefix;
		words = 1;
	} else {
		prefix = cfg->ipv6_prefix > 128 ? 128 : cfg->ipv6_prefix;
		words = 4;
	}
	key->family = pd->family;
#pragma clang loop unroll(full)
	for (i = 0; i < 4; i++)
		out[i] = i < words ? addr[i] & prefix_word_mask(prefix, i * 32) : 0;
}

/* Returns 1 if the client's prefix is over its rate. Fails open: a lost
 * CAS race or a full map lets the query through rather than drop it. */
static __always_inline int rl_over_rate(const struct guard_config *cfg,
					const struct packet_description *pd)
{
	struct guard_rl_key key = {};
	struct guard_rl_state *st;
	__u64 period, tau, now, old, tat;
	__u32 burst = cfg->rl_burst ? cfg->rl_burst : 1;

	if (!cfg->rl_qps)
		return 0;
	rl_key_init(&key, cfg, pd);
	period = GUARD_NSEC_PER_SEC / cfg->rl_qps;
	tau = period * (burst - 1) + GUARD_RL_TICK_SLACK_NS;
	now = bpf_ktime_get_coarse_ns();

	st = bpf_map_lookup_elem(&guard_ratelimit, &key);
	if (!st) {
		struct guard_rl_state fresh = { .tat_ns = now + period };

		bpf_map_update_elem(&guard_ratelimit, &key, &fresh, BPF_NOEXIST);
		return 0;
	}
	old = *(volatile __u64 *)&st->tat_ns;
	tat = old > now ? old : now;
	if (tat - now > tau)
		return 1;
	__sync_val_compare_and_swap(&st->tat_ns, old, tat + period);
	return 0;
}

#endif /* GUARD_RATELIMIT_H */
