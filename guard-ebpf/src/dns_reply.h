/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * dns_reply.h - turns the query in place into its own answer (NXDOMAIN,
 * REFUSED or an empty TC=1 reply) for XDP_TX: addresses and ports swapped,
 * everything after the question (and a minimal OPT) cut, checksums redone.
 */
#ifndef DNS_REPLY_H
#define DNS_REPLY_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "guard_abi.h"
#include "guard_consts.h"
#include "pckt_parsing.h"

/* dns_reply() results besides 0 (the frame is a reply, ready for XDP_TX). */
#define DNS_REPLY_UNTOUCHED (-1) /* nothing written: pass the query on */
#define DNS_REPLY_MANGLED (-2)   /* failed after the first write: drop it */

/* Longest frame we ever build: VLAN, IPv4 with options, the reply. */
#define GUARD_REPLY_FRAME_MAX (sizeof(struct ethhdr) + 4 + 60 + GUARD_REPLY_UDP_MAX)

/* Internet checksum (RFC 1071) arithmetic. Words are summed as loaded, in
 * host order: one's complement sums commute with byte swapping, so the
 * folded result stored the same way lands in network order. */
static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') for one changed 16-bit word. */
static __always_inline void csum_replace2(__u16 *check, __u16 from, __u16 to)
{
	__u64 sum = (__u16)~*check;

	sum += (__u16)~from;
	sum += to;
	*check = csum_fold(sum);
}

static __always_inline void swap_mac(struct ethhdr *eth)
{
	__u8 tmp[ETH_ALEN];

	__builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
}

/* Sum of the UDP datagram (checksum field already zero), which runs to the
 * end of the trimmed frame: 4-byte words, then a 2- and a 1-byte tail, the
 * odd byte padded with zero (RFC 768). */
static __always_inline int udp_sum(void *data, void *data_end, __u64 l4_off,
				   __u64 *sum)
{
	__u32 *p = data + l4_off;
	__u8 *t;
	int i;

#pragma clang loop unroll(disable)
	for (i = 0; i < GUARD_REPLY_UDP_MAX / 4 + 1; i++) {
		barrier_var(p);
		if (p + 1 > data_end)
			break;
		*sum += *p;
		p++;
	}
	t = (__u8 *)p;
	barrier_var(t);
	if (t + 4 <= data_end)
		return -1; /* longer than any reply we build */
	if (t + 2 <= data_end) {
		*sum += *(__u16 *)t;
		t += 2;
	}
	barrier_var(t);
	/* The words above are summed in host order; the padded odd byte is the
	 * high byte of its word in network order, so on a big-endian target it
	 * weighs 256 times what it does on a little-endian one. */
	if (t + 1 <= data_end)
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
		*sum += (__u64)*t << 8;
#else
		*sum += *t;
#endif
	return 0;
}

/*
 * Rewrites the query into a reply of the given action and trims the frame.
 * Returns 0 if the frame is ready for XDP_TX. Everything that can fail is
 * checked before the first write (the trim), so a reply that cannot be
 * built returns DNS_REPLY_UNTOUCHED and the query passes intact. The checks
 * after it only restate, for the verifier, what was already proven; should
 * one ever fail, the frame is no longer the query and DNS_REPLY_MANGLED
 * tells the caller to drop it rather than pass a corrupt packet on.
 *
 * A global (not inlined, not static) function: the verifier checks it once
 * with unknown arguments instead of once per caller state, which is why
 * every offset taken from pd is re-checked here.
 */
__attribute__((noinline)) int dns_reply(struct xdp_md *ctx,
					const struct packet_description *pd,
					__u32 action)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 l3_off, l4_off, dns_off, dns_end, qend, new_len, cur_len, udp_len;
	struct guard_dnshdr *dns;
	struct ethhdr *eth;
	struct udphdr *udp;
	__u64 sum = 0;
	__u8 keep_opt = 0, do_bit = 0, badvers = 0, rcode;
	__u16 port;

	if (!pd)
		return DNS_REPLY_UNTOUCHED;
	l3_off = pd->l3_off;
	l4_off = pd->l4_off;
	dns_off = pd->dns_off;
	dns_end = pd->dns_end;
	qend = pd->qend_off;
	if (l3_off > sizeof(struct ethhdr) + sizeof(struct guard_vlan_hdr) ||
	    l4_off > l3_off + 60 || dns_off != l4_off + sizeof(struct udphdr) ||
	    qend > dns_off + DNS_HDR_LEN + GUARD_QNAME_MAX + DNS_QTAIL_LEN ||
	    qend < dns_off + DNS_HDR_LEN + 1 + DNS_QTAIL_LEN)
		return DNS_REPLY_UNTOUCHED;

	/* RFC 1122 3.2.1.3, 3.3.6: no reply from a group address. A query
	 * sent to multicast or broadcast (mDNS, were 5353 a configured port)
	 * passes, as anything we do not answer does. */
	eth = data;
	if (eth + 1 > data_end || (eth->h_dest[0] & 1))
		return DNS_REPLY_UNTOUCHED;
	if (pd->family == GUARD_FAMILY_IPV4) {
		struct iphdr *iph = data + l3_off;

		if (iph + 1 > data_end)
			return DNS_REPLY_UNTOUCHED;
		if ((bpf_ntohl(iph->daddr) >> 28) == 0xe || iph->daddr == 0xffffffff)
			return DNS_REPLY_UNTOUCHED;
	} else {
		struct ipv6hdr *ip6 = data + l3_off;

		if (ip6 + 1 > data_end)
			return DNS_REPLY_UNTOUCHED;
		if (ip6->daddr.in6_u.u6_addr8[0] == 0xff)
			return DNS_REPLY_UNTOUCHED;
	}

	/* RFC 6891 7: answer EDNS with EDNS. Only the plain layout (the OPT
	 * is the sole record after the question) is recognised; anything
	 * else gets a reply without OPT, which every client accepts. */
	dns = data + dns_off;
	if (dns + 1 > data_end)
		return DNS_REPLY_UNTOUCHED;
	if (!dns->ancount && !dns->nscount && dns->arcount == bpf_htons(1) &&
	    qend + DNS_OPT_LEN <= dns_end) {
		__u8 *opt = data + qend;

		barrier_var(opt);
		if (opt + DNS_OPT_LEN <= data_end && opt[0] == 0 && opt[1] == 0 &&
		    opt[2] == DNS_TYPE_OPT) {
			keep_opt = 1;
			do_bit = opt[DNS_OPT_FLAGS_OFF] & DNS_OPT_DO; /* RFC 3225 3 */
			/* RFC 6891 6.1.3: a version we do not implement gets
			 * BADVERS, not an answer, as CoreDNS would reply. */
			badvers = opt[DNS_OPT_VERSION_OFF] != 0;
		}
	}

	/* The question stays where it is; everything after it goes, including
	 * any Ethernet padding, so lengths come from our offsets. */
	new_len = qend + (keep_opt ? DNS_OPT_LEN : 0);
	/* SEC("xdp") without frags: the driver hands over one linear buffer,
	 * so its length is the frame's (bpf_xdp_get_buff_len needs 5.18). */
	cur_len = data_end - data;
	if (new_len > cur_len)
		return DNS_REPLY_UNTOUCHED;
	if (data + new_len > data_end)
		return DNS_REPLY_UNTOUCHED;
	udp_len = new_len - l4_off;
	barrier_var(udp_len);
	if (udp_len < sizeof(struct udphdr) + DNS_HDR_LEN || udp_len > GUARD_REPLY_UDP_MAX)
		return DNS_REPLY_UNTOUCHED;
	if (new_len < cur_len && bpf_xdp_adjust_tail(ctx, (int)new_len - (int)cur_len))
		return DNS_REPLY_UNTOUCHED; /* a failed trim leaves the frame as it was */
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + new_len > data_end)
		return DNS_REPLY_MANGLED;

	eth = data;
	if (eth + 1 > data_end)
		return DNS_REPLY_MANGLED;
	swap_mac(eth);

	if (pd->family == GUARD_FAMILY_IPV4) {
		struct iphdr *iph = data + l3_off;
		__u16 old_ttl, old_len, *opt;
		__be32 addr;
		int i, opt_words;

		if (iph + 1 > data_end)
			return DNS_REPLY_MANGLED;
		addr = iph->saddr;
		iph->saddr = iph->daddr;
		iph->daddr = addr;
		old_ttl = *(__u16 *)&iph->ttl;
		old_len = iph->tot_len;
		iph->ttl = GUARD_REPLY_TTL;
		iph->tot_len = bpf_htons(new_len - l3_off);
		csum_replace2(&iph->check, old_ttl, *(__u16 *)&iph->ttl);
		csum_replace2(&iph->check, old_len, iph->tot_len);
		/* RFC 791 options record the query's path (a route recorded, a
		 * source route followed); they are not the reply's. Each byte
		 * becomes a NOP (type 1) and the header keeps its length. */
		opt_words = (iph->ihl - 5) * 2;
		opt = (__u16 *)(iph + 1);
#pragma clang loop unroll(disable)
		for (i = 0; i < GUARD_IPV4_OPTION_WORDS; i++) {
			barrier_var(opt);
			if (i >= opt_words)
				break;
			if (opt + 1 > data_end)
				return DNS_REPLY_MANGLED;
			csum_replace2(&iph->check, *opt, IPV4_OPT_NOP_WORD);
			*opt = IPV4_OPT_NOP_WORD;
			opt++;
		}
		sum += iph->saddr;
		sum += iph->daddr;
	} else {
		struct ipv6hdr *ip6 = data + l3_off;
		struct in6_addr addr;
		int i;

		if (ip6 + 1 > data_end)
			return DNS_REPLY_MANGLED;
		addr = ip6->saddr;
		ip6->saddr = ip6->daddr;
		ip6->daddr = addr;
		ip6->payload_len = bpf_htons(udp_len);
		ip6->hop_limit = GUARD_REPLY_TTL;
#pragma clang loop unroll(full)
		for (i = 0; i < 4; i++) {
			sum += ip6->saddr.in6_u.u6_addr32[i];
			sum += ip6->daddr.in6_u.u6_addr32[i];
		}
	}
	/* pseudo-header: protocol and UDP length (RFC 768, RFC 8200 8.1) */
	sum += bpf_htons(GUARD_IPPROTO_UDP);
	sum += bpf_htons(udp_len);

	udp = data + l4_off;
	if (udp + 1 > data_end)
		return DNS_REPLY_MANGLED;
	port = udp->source;
	udp->source = udp->dest;
	udp->dest = port;
	udp->len = bpf_htons(udp_len);
	udp->check = 0;

	/* RFC 1035 4.1.1 flags: QR=1, opcode 0, AA=0, TC only for truncate,
	 * RD and CD echoed (RFC 4035 3.2.2), RA=1, Z=AD=0. */
	dns = data + dns_off;
	if (dns + 1 > data_end)
		return DNS_REPLY_MANGLED;
	/* BADVERS is 16: header RCODE 0 under an extended RCODE of 1. */
	rcode = badvers ? DNS_RCODE_NOERROR
		: action == GUARD_ACTION_NXDOMAIN ? DNS_RCODE_NXDOMAIN
		: action == GUARD_ACTION_REFUSED ? DNS_RCODE_REFUSED
		: DNS_RCODE_NOERROR;
	dns->flags0 = DNS_FLAG_QR | (action == GUARD_ACTION_TRUNCATE && !badvers ? DNS_FLAG_TC : 0) |
		      (dns->flags0 & DNS_FLAG_RD);
	dns->flags1 = DNS_FLAG_RA | (dns->flags1 & DNS_FLAG_CD) | rcode;
	dns->qdcount = bpf_htons(1);
	dns->ancount = 0;
	dns->nscount = 0;
	dns->arcount = keep_opt ? bpf_htons(1) : 0;

	if (keep_opt) {
		/* minimal OPT: root owner, our UDP size, DO echoed, no options */
		__u8 *opt = data + qend;

		barrier_var(opt);
		if (opt + DNS_OPT_LEN > data_end)
			return DNS_REPLY_MANGLED;
		opt[0] = 0;
		opt[1] = 0;
		opt[2] = DNS_TYPE_OPT;
		opt[3] = GUARD_EDNS_UDP_SIZE >> 8;
		opt[4] = GUARD_EDNS_UDP_SIZE & 0xff;
		opt[DNS_OPT_EXT_RCODE_OFF] = badvers; /* BADVERS >> 4 */
		opt[DNS_OPT_VERSION_OFF] = 0;        /* the version we speak */
		opt[7] = do_bit;
		opt[8] = 0;
		opt[9] = 0;
		opt[10] = 0;
	}

	if (udp_sum(data, data_end, l4_off, &sum))
		return DNS_REPLY_MANGLED;
	/* Fresh packet pointers: each exit of the sum loop leaves the old ones
	 * with a different verified range, and the verifier would walk the
	 * rest of the program once per exit. */
	asm volatile("" ::: "memory");
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	udp = data + l4_off;
	if (udp + 1 > data_end)
		return DNS_REPLY_MANGLED;
	sum = csum_fold(sum);
	/* RFC 768: a computed zero is sent as all ones */
	udp->check = sum ? (__u16)sum : 0xffff;
	return 0;
}

#endif /* DNS_REPLY_H */
