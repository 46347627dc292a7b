/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * pckt_parsing.h - small parse steps, in the order a packet meets them.
 *
 * Each returns GUARD_PARSE_OK to go on, or the enum guard_reason that ends
 * the packet's handling. Offsets are 64-bit and relative to ctx->data: with
 * 32-bit offsets clang re-derives values through shifts and the verifier
 * loses their bounds.
 */
#ifndef PCKT_PARSING_H
#define PCKT_PARSING_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "guard_abi.h"
#include "guard_consts.h"

#define GUARD_PARSE_OK (-1)

struct guard_vlan_hdr {
	__be16 tci;
	__be16 proto;
};

struct guard_dnshdr {
	__be16 id;
	__u8 flags0; /* QR, opcode, AA, TC, RD */
	__u8 flags1; /* RA, Z, AD, CD, rcode */
	__be16 qdcount;
	__be16 ancount;
	__be16 nscount;
	__be16 arcount;
};

/* What the parse learnt about one packet; offsets relative to ctx->data. */
struct packet_description {
	__u64 l3_off;
	__u64 l4_off;
	__u64 dns_off;
	__u64 dns_end;     /* end of the DNS message per the UDP length */
	__u64 qend_off;    /* just past qtype/qclass */
	__u8 client_addr[16]; /* IPv4 in the first 4 bytes */
	__u16 client_port; /* host order */
	__u16 qtype;       /* host order */
	__u8 family;       /* GUARD_FAMILY_* */
	__u8 _pad[3];
};

/* Ethernet plus at most one 802.1Q / 802.1ad tag. */
static __always_inline int parse_eth(void *data, void *data_end,
				     struct packet_description *pd, __u16 *proto)
{
	struct ethhdr *eth = data;
	__u64 off = sizeof(*eth);

	if (eth + 1 > data_end)
		return GUARD_REASON_PASS_NOT_DNS;
	*proto = bpf_ntohs(eth->h_proto);
	if (*proto == GUARD_ETH_P_8021Q || *proto == GUARD_ETH_P_8021AD) {
		struct guard_vlan_hdr *vh = data + off;

		if (vh + 1 > data_end)
			return GUARD_REASON_PASS_NOT_DNS;
		*proto = bpf_ntohs(vh->proto);
		off += sizeof(*vh);
	}
	pd->l3_off = off;
	return GUARD_PARSE_OK;
}

/* IPv4 with options; fragments are passed: only the first carries the UDP
 * header, and reassembly is the stack's job. */
static __always_inline int parse_ipv4(void *data, void *data_end,
				      struct packet_description *pd)
{
	struct iphdr *iph = data + pd->l3_off;
	__u64 ihl_bytes;

	if (iph + 1 > data_end)
		return GUARD_REASON_PASS_NOT_DNS;
	if (iph->version != 4 || iph->ihl < 5)
		return GUARD_REASON_PASS_NOT_DNS;
	if (iph->frag_off & bpf_htons(GUARD_IP_MF_OFFSET))
		return GUARD_REASON_PASS_NOT_DNS;
	if (iph->protocol != GUARD_IPPROTO_UDP)
		return GUARD_REASON_PASS_NOT_DNS;
	ihl_bytes = iph->ihl * 4;
	pd->l4_off = pd->l3_off + ihl_bytes;
	pd->family = GUARD_FAMILY_IPV4;
	__builtin_memcpy(pd->client_addr, &iph->saddr, 4);
	return GUARD_PARSE_OK;
}

static __always_inline int ipv6_is_exthdr(__u8 nexthdr)
{
	switch (nexthdr) {
	case GUARD_IPV6_HOPOPTS:
	case GUARD_IPV6_ROUTING:
	case GUARD_IPV6_FRAGMENT:
	case GUARD_IPV6_ESP:
	case GUARD_IPV6_AH:
	case GUARD_IPV6_DSTOPTS:
	case GUARD_IPV6_MOBILITY:
	case GUARD_IPV6_HIP:
	case GUARD_IPV6_SHIM6:
	case GUARD_IPV6_EXP1:
	case GUARD_IPV6_EXP2:
		return 1;
	}
	return 0;
}

/* IPv6 with UDP straight after the fixed header. Extension headers are
 * counted and passed: walking them costs verifier budget, and a chain of
 * them in front of a DNS query is itself an evasion signal worth a counter. */
static __always_inline int parse_ipv6(void *data, void *data_end,
				      struct packet_description *pd)
{
	struct ipv6hdr *ip6 = data + pd->l3_off;

	if (ip6 + 1 > data_end)
		return GUARD_REASON_PASS_NOT_DNS;
	if (ip6->version != 6)
		return GUARD_REASON_PASS_NOT_DNS;
	if (ip6->nexthdr != GUARD_IPPROTO_UDP)
		return ipv6_is_exthdr(ip6->nexthdr) ? GUARD_REASON_PASS_IPV6_EXTHDR
						    : GUARD_REASON_PASS_NOT_DNS;
	pd->l4_off = pd->l3_off + sizeof(*ip6);
	pd->family = GUARD_FAMILY_IPV6;
	__builtin_memcpy(pd->client_addr, &ip6->saddr, 16);
	return GUARD_PARSE_OK;
}

static __always_inline int is_dns_port(const struct guard_config *cfg, __u16 port)
{
	int i;

#pragma clang loop unroll(full)
	for (i = 0; i < GUARD_MAX_PORTS; i++) {
		if (i >= cfg->nports)
			break;
		if (cfg->ports[i] && cfg->ports[i] == port)
			return 1;
	}
	return 0;
}

/* UDP to one of the configured DNS ports. The message ends where the UDP
 * length says: bytes past it (Ethernet padding) are not DNS. */
static __always_inline int parse_udp(void *data, void *data_end,
				     const struct guard_config *cfg,
				     struct packet_description *pd)
{
	struct udphdr *udp = data + pd->l4_off;
	__u64 udp_len;

	if (udp + 1 > data_end)
		return GUARD_REASON_PASS_NOT_DNS;
	if (!is_dns_port(cfg, bpf_ntohs(udp->dest)))
		return GUARD_REASON_PASS_NOT_DNS;
	udp_len = bpf_ntohs(udp->len);
	if (udp_len < sizeof(*udp))
		return GUARD_REASON_PASS_NOT_DNS;
	pd->client_port = bpf_ntohs(udp->source);
	pd->dns_off = pd->l4_off + sizeof(*udp);
	/* a UDP length past the frame is caught by the data_end checks */
	pd->dns_end = pd->l4_off + udp_len;
	return GUARD_PARSE_OK;
}

/* RFC 1035 4.1.1: a query has QR=0, opcode QUERY and, in practice
 * (RFC 9619), exactly one question. */
static __always_inline int parse_dns_header(void *data, void *data_end,
					    struct packet_description *pd)
{
	struct guard_dnshdr *dns = data + pd->dns_off;

	if (dns + 1 > data_end || pd->dns_off + DNS_HDR_LEN > pd->dns_end)
		return GUARD_REASON_MALFORMED_TRUNCATED_HEADER;
	if (dns->flags0 & DNS_FLAG_QR)
		return GUARD_REASON_PASS_NOT_QUERY;
	if (dns->flags0 & DNS_OPCODE_MASK)
		return GUARD_REASON_MALFORMED_OPCODE;
	if (dns->qdcount != bpf_htons(1))
		return GUARD_REASON_MALFORMED_QDCOUNT;
	return GUARD_PARSE_OK;
}

/*
 * Walks the qname visiting only its length bytes (RFC 1035 3.1), records
 * each label's offset and leaves qname_len / nlabels in the scratch.
 * A byte-by-byte walk blew the verifier's budget; this one does not.
 * Compression pointers (RFC 1035 4.1.4) have no place in a query's only
 * question: they are how parsers get sent into loops, so they are refused.
 * A length byte of 0x40..0xBF is an overlong label (the 0x40 extended label
 * type of RFC 6891 is deprecated, 0x80 reserved).
 */
static __always_inline int parse_qname(void *data, void *data_end,
				       __u64 dns_off, struct guard_scratch *s)
{
	__u64 start = dns_off + DNS_HDR_LEN;
	__u64 pos = 0, n = 0;
	int i;

#pragma clang loop unroll(disable)
	for (i = 0; i < GUARD_MAX_LABELS; i++) {
		__u8 *p = data + start + pos;
		__u64 len, next;

		barrier_var(p);
		if (p + 1 > data_end)
			return GUARD_REASON_MALFORMED_TRUNCATED_QUESTION;
		len = *p;
		if (len == 0) {
			s->qname_len = pos + 1;
			s->nlabels = n;
			return GUARD_PARSE_OK;
		}
		if ((len & DNS_LABEL_PTR) == DNS_LABEL_PTR)
			return GUARD_REASON_MALFORMED_COMPRESSION;
		if (len > GUARD_LABEL_MAX)
			return GUARD_REASON_MALFORMED_LABEL_TOO_LONG;
		next = pos + len + 1;
		barrier_var(next);
		/* the root byte still has to fit in the 255 octets */
		if (next > GUARD_QNAME_MAX - 1)
			return GUARD_REASON_MALFORMED_NAME_TOO_LONG;
		if (n < GUARD_MAX_LABELS)
			s->label_off[n] = pos;
		n++;
		pos = next;
	}
	return GUARD_REASON_MALFORMED_NAME_TOO_LONG;
}

/* After the walk: qtype and qclass must follow the name inside the message. */
static __always_inline int parse_question_tail(void *data, void *data_end,
					       struct packet_description *pd,
					       __u64 dns_off, __u64 qname_len)
{
	__u64 tail_off = dns_off + DNS_HDR_LEN + qname_len;
	__u8 *p;

	barrier_var(tail_off);
	p = data + tail_off;
	if (p + DNS_QTAIL_LEN > data_end || tail_off + DNS_QTAIL_LEN > pd->dns_end)
		return GUARD_REASON_MALFORMED_TRUNCATED_QUESTION;
	pd->qtype = ((__u16)p[0] << 8) | p[1];
	pd->qend_off = tail_off + DNS_QTAIL_LEN;
	return GUARD_PARSE_OK;
}

#endif /* PCKT_PARSING_H */
