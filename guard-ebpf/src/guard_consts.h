/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * guard_consts.h - constants private to the XDP program.
 *
 * Everything userspace also needs lives in include/guard_abi.h; this file
 * holds wire-format numbers and verifier helpers only the kernel side uses.
 */
#ifndef GUARD_CONSTS_H
#define GUARD_CONSTS_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* Bounds checks are written "if (ptr + 1 > data_end)" (typed pointer against
 * the void * end), as in Katran; that is what this warning objects to. */
#pragma clang diagnostic ignored "-Wcompare-distinct-pointer-types"

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* Ethernet types (host order; compared after bpf_ntohs). */
#define GUARD_ETH_P_IP 0x0800
#define GUARD_ETH_P_IPV6 0x86DD
#define GUARD_ETH_P_8021Q 0x8100
#define GUARD_ETH_P_8021AD 0x88A8

/* IPv4 fragment bits: MF plus the 13-bit offset. */
#define GUARD_IP_MF_OFFSET 0x3FFF

/* IPv6 next-header values that are extension headers (RFC 8200 4, IANA
 * "IPv6 Extension Header Types"): DNS behind them is passed, not parsed. */
#define GUARD_IPV6_HOPOPTS 0
#define GUARD_IPV6_ROUTING 43
#define GUARD_IPV6_FRAGMENT 44
#define GUARD_IPV6_ESP 50
#define GUARD_IPV6_AH 51
#define GUARD_IPV6_DSTOPTS 60
#define GUARD_IPV6_MOBILITY 135
#define GUARD_IPV6_HIP 139
#define GUARD_IPV6_SHIM6 140
#define GUARD_IPV6_EXP1 253
#define GUARD_IPV6_EXP2 254

#define GUARD_IPPROTO_UDP 17

/* Longest header chain in front of DNS: Ethernet, one tag, IPv4 with
 * options, UDP. */
#define GUARD_DNS_OFF_MAX (14 + 4 + 60 + 8)

/* DNS wire format (RFC 1035 4.1.1). */
#define DNS_HDR_LEN 12
#define DNS_QTAIL_LEN 4          /* qtype + qclass */
#define DNS_FLAG_QR 0x80         /* in flags byte 0 */
#define DNS_OPCODE_MASK 0x78     /* in flags byte 0 */
#define DNS_FLAG_TC 0x02         /* in flags byte 0 */
#define DNS_FLAG_RD 0x01         /* in flags byte 0 */
#define DNS_FLAG_RA 0x80         /* in flags byte 1 */
#define DNS_FLAG_CD 0x10         /* in flags byte 1 */
#define DNS_RCODE_NOERROR 0
#define DNS_RCODE_NXDOMAIN 3
#define DNS_RCODE_REFUSED 5
#define DNS_LABEL_PTR 0xC0       /* RFC 1035 4.1.4 compression pointer */

/* EDNS(0) OPT pseudo-RR (RFC 6891 6.1.2): owner(1) type(2) class(2)
 * ext-rcode(1) version(1) flags(2) rdlen(2). */
#define DNS_TYPE_OPT 41
#define DNS_OPT_LEN 11
#define DNS_OPT_EXT_RCODE_OFF 5  /* upper 8 bits of the 12-bit RCODE */
#define DNS_OPT_VERSION_OFF 6
#define DNS_OPT_FLAGS_OFF 7      /* first byte of the 16-bit flags */
#define DNS_OPT_DO 0x80          /* RFC 3225: DO is the top flags bit */
/* The UDP size we advertise in replies: the DNS Flag Day 2020 value. */
#define GUARD_EDNS_UDP_SIZE 1232

/* TTL / hop limit of synthesized replies. */
#define GUARD_REPLY_TTL 64
/* RFC 791: at most 40 bytes of IPv4 options, 20 16-bit words. */
#define GUARD_IPV4_OPTION_WORDS 20
/* Two NOP options (type 1), the same in either byte order. */
#define IPV4_OPT_NOP_WORD 0x0101

/* Longest synthesized UDP datagram: header, DNS header, question, OPT. */
#define GUARD_REPLY_UDP_MAX (8 + DNS_HDR_LEN + GUARD_QNAME_MAX + DNS_QTAIL_LEN + DNS_OPT_LEN)

/*
 * clang 14 rewrites "ptr + n > data_end" into arithmetic on data_end, which
 * the verifier rejects; an empty asm makes the value opaque so the check is
 * emitted in pointer form. The same trick stops clang from re-deriving a
 * bounded offset through shifts and losing the verifier's bound.
 */
/* 8-byte load and store at a possibly unaligned address. Written in asm
 * because clang splits any access to a __u8 buffer into single bytes (8x the
 * instructions); BPF on x86-64 and arm64 does unaligned accesses natively
 * and the verifier allows them on map values. */
static __always_inline __u64 load_word(const void *p)
{
	__u64 w;

	asm("%0 = *(u64 *)(%1 + 0)" : "=r"(w) : "r"(p) : "memory");
	return w;
}

static __always_inline void store_word(void *p, __u64 w)
{
	asm volatile("*(u64 *)(%0 + 0) = %1" : : "r"(p), "r"(w) : "memory");
}

#ifndef barrier_var /* bpf_helpers.h has the same since libbpf 0.6 */
#define barrier_var(v) asm volatile("" : "+r"(v))
#endif

/* guard_word_mask() (guard_hash.h) of clamp(rem, 0, 8), without branches: one verifier
 * state per word instead of three. */
static __always_inline __u64 word_mask_clamped(__s64 rem)
{
	__s64 neg = rem >> 63;          /* -1 if rem < 0 */
	__s64 pos = rem & ~neg;         /* max(rem, 0) */
	__s64 full;

	barrier_var(pos);
	full = (7 - pos) >> 63;         /* -1 if pos >= 8 */
	barrier_var(full);
	return (((__u64)1 << ((pos & 7) * 8)) - 1) | (__u64)full;
}

#endif /* GUARD_CONSTS_H */
