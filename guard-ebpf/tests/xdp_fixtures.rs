//! Kernel fixtures for the XDP program, in Katran's style: each fixture is an
//! input frame, the XDP verdict and reason counter it must produce and, for
//! answered queries, the exact reply frame, checked byte by byte (checksums
//! included). Frames go through BPF_PROG_TEST_RUN, so no network is needed,
//! but loading a program needs root: without it the tests print a loud
//! SKIPPED line (or fail, when CI is set).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{
    maps::{Array, ArrayOfMaps, MapData, PerCpuArray, RingBuf},
    programs::{TestRun as _, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use guard_ebpf::{abi::*, reference_suffix_keys, XDP_OBJECT};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const BPF_F_MMAPABLE: u32 = 1 << 10;
const BPF_F_INNER_MAP: u32 = 1 << 12;

const SEED: u64 = 0x5eed_0123_4567_89ab;

const BLOCK_SELF: u8 = guard_rule_flags::GUARD_RULE_BLOCK_SELF as u8;
const BLOCK_SUB: u8 = guard_rule_flags::GUARD_RULE_BLOCK_SUB as u8;
const ALLOW_SELF: u8 = guard_rule_flags::GUARD_RULE_ALLOW_SELF as u8;
const ALLOW_SUB: u8 = guard_rule_flags::GUARD_RULE_ALLOW_SUB as u8;
const FORCE_NXDOMAIN: u8 = guard_rule_flags::GUARD_RULE_FORCE_NXDOMAIN as u8;
const FORCE_DROP: u8 = guard_rule_flags::GUARD_RULE_FORCE_DROP as u8;
const FORCE_NXDOMAIN_SUB: u8 = guard_rule_flags::GUARD_RULE_FORCE_NXDOMAIN_SUB as u8;
const FORCE_DROP_SUB: u8 = guard_rule_flags::GUARD_RULE_FORCE_DROP_SUB as u8;

use guard_action::*;
use guard_reason::*;

// ---- harness -----------------------------------------------------------

/// The pin directory of one loaded copy; removed on drop, also on panic.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One loaded copy of the program with its own pinned maps.
struct Guard {
    ebpf: Ebpf,
    _pins: PinDir, // declared after ebpf: the maps close first, then the pins go
}

fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: needs root (BPF_PROG_TEST_RUN); CI must run these tests");
    }
    // Straight to fd 2: the test harness captures eprintln!.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("\n*** SKIPPED: needs root: {test} (run `sudo -E cargo test -p guard-ebpf`) ***\n")
            .as_bytes(),
    );
    false
}

fn base_config() -> guard_config {
    let mut ports = [0u16; GUARD_MAX_PORTS as usize];
    ports[0] = 53;
    ports[1] = 5300;
    guard_config {
        abi_version: GUARD_ABI_VERSION,
        block_action: GUARD_ACTION_NXDOMAIN as u8,
        rl_action: GUARD_ACTION_DROP as u8,
        ipv4_prefix: 24,
        ipv6_prefix: 56,
        rl_qps: 0,
        rl_burst: 0,
        ports,
        nports: 2,
        allow_sample: 0,
        dynblocks: 0,
    }
}

/// The rules every fixture table holds, as list syntax would give them.
fn base_rules() -> Vec<(String, u8)> {
    let mut rules: Vec<(String, u8)> = [
        ("blocked.example", BLOCK_SELF),             // hosts-file line
        ("ads.example", BLOCK_SELF | BLOCK_SUB),     // ||ads.example^
        ("sub.example", BLOCK_SUB),                  // *.sub.example
        ("good.ads.example", ALLOW_SELF),            // @@good.ads.example
        ("allowed.example", ALLOW_SELF | ALLOW_SUB), // @@||allowed.example^
        ("x.allowed.example", BLOCK_SELF),           // loses to the allowlist
        ("drop.example", BLOCK_SELF | FORCE_DROP),   // RPZ rpz-drop.
        ("nx.example", BLOCK_SELF | FORCE_NXDOMAIN), // RPZ CNAME .
    ]
    .iter()
    .map(|(n, f)| (n.to_string(), *f))
    .collect();
    rules.push((long_name('b'), BLOCK_SELF));
    rules
}

/// A 253-character name (255 octets on the wire: the RFC 1035 maximum).
fn long_name(c: char) -> String {
    let l63: String = std::iter::repeat_n(c, 63).collect();
    let l61: String = std::iter::repeat_n(c, 61).collect();
    let name = format!("{l63}.{l63}.{l63}.{l61}");
    assert_eq!(name.len(), 253);
    name
}

fn build_table(rules: &[(String, u8)], nbuckets: u32) -> guard_ebpf::table::Table {
    let entries: Vec<guard_ebpf::table::Entry> =
        rules.iter().map(|(name, flags)| guard_ebpf::table::Entry::for_name(name, SEED, *flags)).collect();
    guard_ebpf::table::build_with_home_buckets(&entries, SEED, 1, nbuckets)
}

fn name_key(name: &str) -> u64 {
    reference_suffix_keys(&wire(name), SEED).expect("valid name")[0]
}

impl Guard {
    fn load(test: &str) -> Option<Guard> {
        Self::load_with_clients(test, None)
    }

    /// [`Self::load`] with the rate-limit LRU sized to `max_clients`
    /// (the loader's `xdp.ratelimit.max_clients`) instead of the object's.
    fn load_with_clients(test: &str, max_clients: Option<u32>) -> Option<Guard> {
        if !privileged(test) {
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/dgfix-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("{test}: mkdir {}: {e}", dir.display()));
        let pins = PinDir(dir);
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&pins.0);
        if let Some(n) = max_clients {
            loader.map_max_entries("guard_ratelimit", n);
        }
        let mut ebpf = loader
            .load(XDP_OBJECT)
            .unwrap_or_else(|e| panic!("{test}: loading guard.bpf.o: {e:?}"));
        let prog: &mut Xdp = ebpf.program_mut("dns_guard").unwrap().try_into().unwrap();
        prog.load()
            .unwrap_or_else(|e| panic!("{test}: verifier rejected dns_guard: {e}"));
        let mut g = Guard { ebpf, _pins: pins };
        g.config(base_config());
        g.table(&base_rules(), 64);
        Some(g)
    }

    fn config(&mut self, cfg: guard_config) {
        let mut map: Array<_, guard_config> = self
            .ebpf
            .map_mut("guard_config")
            .unwrap()
            .try_into()
            .unwrap();
        map.set(0, cfg, 0).unwrap();
    }

    /// Builds a table the way guard_abi.h describes it (bucketised linear
    /// probing, header in element 0) and swaps it into slot 0.
    fn table(&mut self, rules: &[(String, u8)], nbuckets: u32) {
        self.install(&build_table(rules, nbuckets));
    }

    /// Swaps a built (possibly hand-edited) table into slot 0.
    fn install(&mut self, table: &guard_ebpf::table::Table) {
        let mut buckets = vec![guard_bucket::default(); table.elements() as usize];
        // SAFETY: both are 72-byte plain-old-data structs (checked by tests/abi.rs).
        buckets[0] = unsafe { std::mem::transmute::<guard_table_header, guard_bucket>(table.header) };
        let bloom_first = 1 + table.buckets.len();
        buckets[1..bloom_first].copy_from_slice(&table.buckets);
        buckets[bloom_first..].copy_from_slice(&table.bloom);
        let nbuckets = table.elements() - 1;

        let mut inner =
            Array::<MapData, guard_bucket>::create(nbuckets + 1, BPF_F_MMAPABLE | BPF_F_INNER_MAP)
                .expect("creating the inner table");
        for (i, b) in buckets.iter().enumerate() {
            inner.set(i as u32, b, 0).unwrap();
        }
        let mut outer: ArrayOfMaps<&mut MapData, Array<MapData, guard_bucket>> = self
            .ebpf
            .map_mut("guard_tables")
            .unwrap()
            .try_into()
            .unwrap();
        outer.set(0, &inner, 0).expect("installing the table");
    }

    /// Puts `zone` under a dynamic block (guard_abi.h) that ends
    /// `left_ns` from now (negative: ended already), and sets the count the
    /// program checks before it looks.
    fn dynblock(&mut self, zone: &str, action: guard_action, left_ns: i64) {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes into the timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let now = ts.tv_sec * 1_000_000_000 + ts.tv_nsec;
        let mut map: aya::maps::HashMap<_, u64, guard_dynblock> =
            self.ebpf.map_mut("guard_dynblock").unwrap().try_into().unwrap();
        let value = guard_dynblock { expires_ns: (now + left_ns) as u64, action: action as u8, _pad: [0; 7] };
        map.insert(name_key(zone), value, 0).unwrap();
        let n = map.keys().count() as u32;
        self.config(guard_config { dynblocks: n, ..base_config() });
    }

    fn remove_table(&mut self) {
        let map: &mut MapData = match self.ebpf.map_mut("guard_tables").unwrap() {
            aya::maps::Map::ArrayOfMaps(m) => m,
            other => panic!("guard_tables is {other:?}"),
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(map.fd()));
        let key: u32 = 0;
        // aya 0.14 has no delete for map-of-maps: BPF_MAP_DELETE_ELEM by hand.
        #[repr(C)]
        struct Attr {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let attr = Attr {
            map_fd: fd as u32,
            _pad: 0,
            key: &key as *const u32 as u64,
            value: 0,
            flags: 0,
        };
        // SAFETY: BPF_MAP_DELETE_ELEM (3) reads map_fd and key from attr.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                3,
                &attr as *const Attr,
                std::mem::size_of::<Attr>(),
            )
        };
        assert_eq!(
            r,
            0,
            "deleting the table: {}",
            std::io::Error::last_os_error()
        );
    }

    fn stats(&self) -> Vec<u64> {
        let map: PerCpuArray<_, u64> = self.ebpf.map("guard_stats").unwrap().try_into().unwrap();
        (0..guard_stat::GUARD_STAT__COUNT as u32)
            .map(|i| map.get(&i, 0).unwrap().iter().sum())
            .collect()
    }

    fn events(&mut self) -> Vec<guard_event> {
        let mut ring = RingBuf::try_from(self.ebpf.map_mut("guard_events").unwrap()).unwrap();
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            assert_eq!(item.len(), std::mem::size_of::<guard_event>());
            // SAFETY: the kernel wrote a whole guard_event; read_unaligned copes
            // with the ring buffer's 8-byte alignment.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const guard_event) });
        }
        out
    }

    /// Runs one frame; returns the XDP verdict, the output frame and the
    /// counters that moved.
    fn run(&mut self, frame: &[u8]) -> Run {
        let before = self.stats();
        let prog: &Xdp = self.ebpf.program("dns_guard").unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 512];
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"));
        out.truncate(res.data_size_out as usize);
        let after = self.stats();
        let moved = before
            .iter()
            .zip(&after)
            .enumerate()
            .filter(|(_, (b, a))| a != b)
            .map(|(i, (b, a))| (i as u32, a - b))
            .collect();
        Run {
            verdict: res.return_value,
            out,
            moved,
        }
    }

    /// Runs a frame and checks verdict, reason counter and (for anything
    /// but TX) that the frame went through untouched.
    fn expect(&mut self, what: &str, frame: &[u8], verdict: u32, reason: guard_reason) -> Run {
        let run = self.run(frame);
        assert_eq!(
            run.verdict, verdict,
            "{what}: verdict (counters moved: {:?})",
            run.moved
        );
        let reasons: Vec<_> = run
            .moved
            .iter()
            .filter(|(i, _)| *i < GUARD_REASON__COUNT as u32)
            .collect();
        assert_eq!(
            reasons,
            vec![&(reason as u32, 1)],
            "{what}: exactly one reason counter, {reason:?}"
        );
        let tx = run
            .moved
            .iter()
            .any(|&(i, n)| i == guard_stat::GUARD_STAT_REPLIES_TX as u32 && n == 1);
        assert_eq!(tx, verdict == XDP_TX, "{what}: replies_tx counter");
        if verdict != XDP_TX {
            assert_eq!(run.out, frame, "{what}: frame must pass untouched");
        }
        run
    }

    /// A blocked query answered in place: the reply must equal `expected`
    /// byte for byte, and its checksums must verify on their own.
    fn expect_reply(&mut self, what: &str, frame: &[u8], reason: guard_reason, expected: &[u8]) {
        let run = self.expect(what, frame, XDP_TX, reason);
        verify_checksums(what, &run.out);
        assert_eq!(hex(&run.out), hex(expected), "{what}: reply frame");
    }
}

struct Run {
    verdict: u32,
    out: Vec<u8>,
    moved: Vec<(u32, u64)>,
}

fn hex(b: &[u8]) -> String {
    b.chunks(16)
        .map(|c| {
            c.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---- frames --------------------------------------------------------------

fn wire(name: &str) -> Vec<u8> {
    let mut w = Vec::new();
    for label in name.split('.').filter(|l| !l.is_empty()) {
        w.push(label.len() as u8);
        w.extend_from_slice(label.as_bytes());
    }
    w.push(0);
    w
}

const RD: u16 = 0x0100;
const CD: u16 = 0x0010;
const AD: u16 = 0x0020;

/// A DNS message, built field by field.
#[derive(Clone)]
struct Dns {
    id: u16,
    flags: u16,
    counts: [u16; 4],
    qname: Vec<u8>,
    qtype: u16,
    qclass: u16,
    rest: Vec<u8>, // records after the question
}

impl Dns {
    fn query(name: &str) -> Dns {
        Dns {
            id: 0xbeef,
            flags: RD,
            counts: [1, 0, 0, 0],
            qname: wire(name),
            qtype: 1,
            qclass: 1,
            rest: vec![],
        }
    }

    /// Adds an OPT record (RFC 6891) with the given UDP size, DO bit and
    /// option bytes.
    fn edns(mut self, udp: u16, do_bit: bool, options: &[u8]) -> Dns {
        self.counts[3] += 1;
        self.rest.push(0);
        self.rest.extend_from_slice(&41u16.to_be_bytes());
        self.rest.extend_from_slice(&udp.to_be_bytes());
        self.rest
            .extend_from_slice(&[0, 0, if do_bit { 0x80 } else { 0 }, 0]);
        self.rest
            .extend_from_slice(&(options.len() as u16).to_be_bytes());
        self.rest.extend_from_slice(options);
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.id.to_be_bytes());
        b.extend_from_slice(&self.flags.to_be_bytes());
        for c in self.counts {
            b.extend_from_slice(&c.to_be_bytes());
        }
        b.extend_from_slice(&self.qname);
        b.extend_from_slice(&self.qtype.to_be_bytes());
        b.extend_from_slice(&self.qclass.to_be_bytes());
        b.extend_from_slice(&self.rest);
        b
    }

    /// The reply the program must synthesize (RFC 1035 4.1.1; RFC 6891 7
    /// for the OPT; RFC 3225 for DO).
    fn reply(&self, rcode: u16, tc: bool, opt_do: Option<bool>) -> Vec<u8> {
        let tc_bit = if tc { 0x0200 } else { 0 };
        let flags = 0x8000 | tc_bit | (self.flags & RD) | 0x0080 | (self.flags & CD) | rcode;
        let r = Dns {
            id: self.id,
            flags,
            counts: [1, 0, 0, opt_do.is_some() as u16],
            qname: self.qname.clone(),
            qtype: self.qtype,
            qclass: self.qclass,
            rest: match opt_do {
                Some(d) => vec![
                    0,
                    0,
                    41,
                    0x04,
                    0xd0,
                    0,
                    0,
                    if d { 0x80 } else { 0 },
                    0,
                    0,
                    0,
                ],
                None => vec![],
            },
        };
        r.bytes()
    }
}

/// An Ethernet frame carrying UDP, built field by field with correct
/// checksums (RFC 791, RFC 768, RFC 8200 8.1).
#[derive(Clone)]
struct Frame {
    smac: [u8; 6],
    dmac: [u8; 6],
    vlan: Option<u16>,
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
    ip_options: Vec<u8>,
    ttl: u8,
    frag: bool,
    hop_by_hop: bool,
    sport: u16,
    dport: u16,
    payload: Vec<u8>,
    padding: usize,
}

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut x = [0u8; 16];
    x[..4].copy_from_slice(&a);
    x
}

const CLIENT6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x42,
];
const SERVER6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x53,
];

impl Frame {
    fn v4(payload: Vec<u8>) -> Frame {
        Frame {
            smac: [0x02, 0, 0, 0, 0, 0x01],
            dmac: [0x02, 0, 0, 0, 0, 0x02],
            vlan: None,
            v6: false,
            src: v4([192, 0, 2, 10]),
            dst: v4([198, 51, 100, 53]),
            ip_options: vec![],
            ttl: 61,
            frag: false,
            hop_by_hop: false,
            sport: 40000,
            dport: 53,
            payload,
            padding: 0,
        }
    }

    fn v6(payload: Vec<u8>) -> Frame {
        Frame {
            v6: true,
            src: CLIENT6,
            dst: SERVER6,
            ..Frame::v4(payload)
        }
    }

    fn from(mut self, a: [u8; 4]) -> Frame {
        self.src = v4(a);
        self
    }

    /// The frame the program must send back for this query.
    fn reply(&self, payload: Vec<u8>) -> Frame {
        Frame {
            smac: self.dmac,
            dmac: self.smac,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            ttl: 64,
            padding: 0,
            hop_by_hop: false,
            payload,
            ..self.clone()
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let udp_len = 8 + self.payload.len();
        let mut udp = Vec::new();
        udp.extend_from_slice(&self.sport.to_be_bytes());
        udp.extend_from_slice(&self.dport.to_be_bytes());
        udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&self.payload);
        let alen = if self.v6 { 16 } else { 4 };
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&self.src[..alen]);
        pseudo.extend_from_slice(&self.dst[..alen]);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
        pseudo.extend_from_slice(&udp);
        let mut c = !csum(&pseudo);
        if c == 0 {
            c = 0xffff;
        }
        udp[6..8].copy_from_slice(&c.to_be_bytes());

        let mut f = Vec::new();
        f.extend_from_slice(&self.dmac);
        f.extend_from_slice(&self.smac);
        if let Some(tci) = self.vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        if self.v6 {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let ext = if self.hop_by_hop { 8 } else { 0 };
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&((udp_len + ext) as u16).to_be_bytes());
            f.push(if self.hop_by_hop { 0 } else { 17 });
            f.push(self.ttl);
            f.extend_from_slice(&self.src);
            f.extend_from_slice(&self.dst);
            if self.hop_by_hop {
                f.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]); // PadN
            }
        } else {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let ihl = 5 + self.ip_options.len() / 4;
            let mut ip = vec![0x40 | ihl as u8, 0];
            ip.extend_from_slice(&((ihl * 4 + udp_len) as u16).to_be_bytes());
            ip.extend_from_slice(&0x1234u16.to_be_bytes());
            ip.extend_from_slice(&(if self.frag { 0x2000u16 } else { 0x4000 }).to_be_bytes());
            ip.extend_from_slice(&[self.ttl, 17, 0, 0]);
            ip.extend_from_slice(&self.src[..4]);
            ip.extend_from_slice(&self.dst[..4]);
            ip.extend_from_slice(&self.ip_options);
            let c = !csum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        f.extend_from_slice(&udp);
        f.extend(std::iter::repeat_n(0u8, self.padding));
        f
    }
}

/// RFC 1071 one's complement sum (not inverted).
fn csum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Checks the IPv4 header checksum and the UDP checksum of a frame on their
/// own (a valid checksum sums to 0xffff), independent of the fixture's
/// expected bytes.
fn verify_checksums(what: &str, f: &[u8]) {
    let mut off = 12;
    let mut ethertype = u16::from_be_bytes([f[off], f[off + 1]]);
    if ethertype == 0x8100 {
        off += 4;
        ethertype = u16::from_be_bytes([f[off], f[off + 1]]);
    }
    let l3 = off + 2;
    let (l4, mut pseudo) = if ethertype == 0x0800 {
        let ihl = (f[l3] & 0xf) as usize * 4;
        assert_eq!(
            csum(&f[l3..l3 + ihl]),
            0xffff,
            "{what}: IPv4 header checksum"
        );
        assert_eq!(
            u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]) as usize,
            f.len() - l3,
            "{what}: IPv4 total length"
        );
        (l3 + ihl, [&f[l3 + 12..l3 + 20]].concat())
    } else {
        assert_eq!(
            u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]) as usize,
            f.len() - l3 - 40,
            "{what}: IPv6 payload length"
        );
        (l3 + 40, [&f[l3 + 8..l3 + 40]].concat())
    };
    let udp_len = u16::from_be_bytes([f[l4 + 4], f[l4 + 5]]) as usize;
    assert_eq!(udp_len, f.len() - l4, "{what}: UDP length");
    assert_ne!(
        u16::from_be_bytes([f[l4 + 6], f[l4 + 7]]),
        0,
        "{what}: UDP checksum present"
    );
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    pseudo.extend_from_slice(&f[l4..]);
    assert_eq!(csum(&pseudo), 0xffff, "{what}: UDP checksum");
}

const NXDOMAIN: u16 = 3;
const REFUSED: u16 = 5;

// ---- fixtures ----------------------------------------------------------

/// The verifier gives up at 1M processed instructions
/// (BPF_COMPLEXITY_LIMIT_INSNS), and then the program does not load at all.
/// The count depends on the kernel build as much as on the program: the same
/// object took 170,993 on one 6.18.44 build and 604,396 on another
/// (docs/benchmarks.md). Fail well before the limit, so that growth shows up
/// here rather than as a sidecar that cannot start.
#[test]
fn the_program_verifies_well_under_the_kernels_limit() {
    const BUDGET: u32 = 800_000;
    let Some(g) = Guard::load("the_program_verifies_well_under_the_kernels_limit") else {
        return;
    };
    let prog: &Xdp = g.ebpf.program("dns_guard").unwrap().try_into().unwrap();
    let processed = prog
        .info()
        .expect("program info")
        .verified_instruction_count()
        .expect("the kernel reports verified instructions (5.16 and later)");
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("dns_guard: {processed} instructions processed by the verifier (budget {BUDGET}, limit 1000000)\n")
            .as_bytes(),
    );
    assert!(processed <= BUDGET, "the verifier processed {processed} instructions; the budget is {BUDGET} of the kernel's 1M");
}

#[test]
fn clean_names_pass_untouched() {
    let Some(mut g) = Guard::load("clean_names_pass_untouched") else {
        return;
    };
    for name in [
        "www.clean.example",
        "example",
        "blocked.example.org",
        "notblocked.example",
        "ads.example.net",
    ] {
        let f = Frame::v4(Dns::query(name).bytes()).bytes();
        g.expect(name, &f, XDP_PASS, GUARD_REASON_ALLOW_CLEAN);
    }
    // The root name has no labels and nothing to look up.
    let f = Frame::v4(Dns::query(".").bytes()).bytes();
    g.expect("root", &f, XDP_PASS, GUARD_REASON_ALLOW_CLEAN);
    // Second configured port.
    let mut fr = Frame::v4(Dns::query("www.clean.example").bytes());
    fr.dport = 5300;
    g.expect("port 5300", &fr.bytes(), XDP_PASS, GUARD_REASON_ALLOW_CLEAN);
    assert!(g.events().is_empty(), "clean queries make no events");
}

#[test]
fn allowed_queries_are_sampled_when_asked() {
    let Some(mut g) = Guard::load("allowed_queries_are_sampled_when_asked") else {
        return;
    };
    let f = Frame::v4(Dns::query("www.clean.example").bytes()).bytes();
    // log.allow_sample: 1 -> every allowed query is an event, still passed.
    g.config(guard_config { allow_sample: u32::MAX, ..base_config() });
    for _ in 0..3 {
        g.expect("sampled", &f, XDP_PASS, GUARD_REASON_ALLOW_CLEAN);
    }
    let events = g.events();
    assert_eq!(events.len(), 3, "every allowed query sampled");
    for e in &events {
        assert_eq!(e.verdict, guard_verdict::GUARD_VERDICT_ALLOW as u8);
        assert_eq!(e.action, GUARD_ACTION_PASS as u8);
        assert_eq!(e.reason, GUARD_REASON_ALLOW_CLEAN as u8);
    }
    // About half at 0.5: 400 tries land well inside [100, 300].
    g.config(guard_config { allow_sample: u32::MAX / 2, ..base_config() });
    for _ in 0..400 {
        g.expect("half", &f, XDP_PASS, GUARD_REASON_ALLOW_CLEAN);
    }
    let n = g.events().len();
    assert!((100..=300).contains(&n), "{n} of 400 sampled at 0.5");
    // 0 -> none.
    g.config(guard_config { allow_sample: 0, ..base_config() });
    g.expect("off", &f, XDP_PASS, GUARD_REASON_ALLOW_CLEAN);
    assert!(g.events().is_empty());
}

#[test]
fn exact_block_with_each_action() {
    let Some(mut g) = Guard::load("exact_block_with_each_action") else {
        return;
    };
    let q = Dns::query("blocked.example");
    let fr = Frame::v4(q.bytes());
    let f = fr.bytes();

    g.expect_reply(
        "nxdomain",
        &f,
        GUARD_REASON_BLOCK_EXACT,
        &fr.reply(q.reply(NXDOMAIN, false, None)).bytes(),
    );

    g.config(guard_config {
        block_action: GUARD_ACTION_REFUSED as u8,
        ..base_config()
    });
    g.expect_reply(
        "refused",
        &f,
        GUARD_REASON_BLOCK_EXACT,
        &fr.reply(q.reply(REFUSED, false, None)).bytes(),
    );

    g.config(guard_config {
        block_action: GUARD_ACTION_TRUNCATE as u8,
        ..base_config()
    });
    g.expect_reply(
        "truncate",
        &f,
        GUARD_REASON_BLOCK_EXACT,
        &fr.reply(q.reply(0, true, None)).bytes(),
    );

    g.config(guard_config {
        block_action: GUARD_ACTION_DROP as u8,
        ..base_config()
    });
    g.expect("drop", &f, XDP_DROP, GUARD_REASON_BLOCK_EXACT);

    g.config(guard_config {
        block_action: GUARD_ACTION_LOG as u8,
        ..base_config()
    });
    g.expect("log", &f, XDP_PASS, GUARD_REASON_BLOCK_EXACT);

    let actions: Vec<_> = g.events().iter().map(|e| e.action).collect();
    let want = [
        GUARD_ACTION_NXDOMAIN,
        GUARD_ACTION_REFUSED,
        GUARD_ACTION_TRUNCATE,
        GUARD_ACTION_DROP,
        GUARD_ACTION_LOG,
    ];
    assert_eq!(
        actions,
        want.map(|a| a as u8),
        "one event per block, with the action taken"
    );
}

#[test]
fn suffix_rules() {
    let Some(mut g) = Guard::load("suffix_rules") else {
        return;
    };
    // ||ads.example^ : the apex and every subdomain.
    for (name, reason) in [
        ("ads.example", GUARD_REASON_BLOCK_EXACT),
        ("x.ads.example", GUARD_REASON_BLOCK_SUFFIX),
        ("a.b.c.ads.example", GUARD_REASON_BLOCK_SUFFIX),
        // *.sub.example : subdomains only.
        ("a.sub.example", GUARD_REASON_BLOCK_SUFFIX),
        // blocked.example is exact only.
        ("www.blocked.example", GUARD_REASON_ALLOW_CLEAN),
        ("sub.example", GUARD_REASON_ALLOW_CLEAN),
        ("xads.example", GUARD_REASON_ALLOW_CLEAN),
    ] {
        let q = Dns::query(name);
        let fr = Frame::v4(q.bytes());
        if reason == GUARD_REASON_ALLOW_CLEAN {
            g.expect(name, &fr.bytes(), XDP_PASS, reason);
        } else {
            g.expect_reply(
                name,
                &fr.bytes(),
                reason,
                &fr.reply(q.reply(NXDOMAIN, false, None)).bytes(),
            );
        }
    }
    // The rule id is the key of the most specific matching suffix.
    let ev = g.events();
    assert_eq!(ev.len(), 4);
    assert_eq!(ev[0].rule_id, name_key("ads.example"));
    assert_eq!(ev[2].rule_id, name_key("ads.example"));
    assert_eq!(ev[3].rule_id, name_key("sub.example"));
}

#[test]
fn allowlist_wins() {
    let Some(mut g) = Guard::load("allowlist_wins") else {
        return;
    };
    for name in [
        "good.ads.example",
        "allowed.example",
        "x.allowed.example",
        "deep.x.allowed.example",
    ] {
        let f = Frame::v4(Dns::query(name).bytes()).bytes();
        g.expect(name, &f, XDP_PASS, GUARD_REASON_ALLOW_ALLOWLIST);
    }
    // ALLOW_SELF on good.ads.example does not cover its subdomains.
    let q = Dns::query("x.good.ads.example");
    let fr = Frame::v4(q.bytes());
    g.expect_reply(
        "x.good",
        &fr.bytes(),
        GUARD_REASON_BLOCK_SUFFIX,
        &fr.reply(q.reply(NXDOMAIN, false, None)).bytes(),
    );
}

#[test]
fn dynamic_blocks_cover_subdomains_only() {
    let Some(mut g) = Guard::load("dynamic_blocks_cover_subdomains_only") else {
        return;
    };
    let q = Dns::query("rnd123.victim.example");
    let fr = Frame::v4(q.bytes());
    // Nothing is blocked yet: a clean name, and no lookup made.
    g.expect("before", &fr.bytes(), XDP_PASS, GUARD_REASON_ALLOW_CLEAN);

    g.dynblock("victim.example", GUARD_ACTION_REFUSED, 60_000_000_000);
    g.expect_reply(
        "random subdomain",
        &fr.bytes(),
        GUARD_REASON_BLOCK_DYNAMIC,
        &fr.reply(q.reply(REFUSED, false, None)).bytes(),
    );
    let q2 = Dns::query("a.B.victim.example");
    let fr2 = Frame::v4(q2.bytes());
    g.expect_reply("deeper", &fr2.bytes(), GUARD_REASON_BLOCK_DYNAMIC, &fr2.reply(q2.reply(REFUSED, false, None)).bytes());
    let ev = g.events();
    assert_eq!(ev.len(), 2, "one event per dynamic block");
    assert_eq!(ev[0].rule_id, name_key("victim.example"), "the event names the zone's key");
    assert_eq!(ev[0].reason, GUARD_REASON_BLOCK_DYNAMIC as u8);
    assert_eq!(ev[0].action, GUARD_ACTION_REFUSED as u8);

    // The apex, other zones and the parent keep resolving.
    for name in ["victim.example", "x.othervictim.example", "example", "x.example"] {
        g.expect(name, &Frame::v4(Dns::query(name).bytes()).bytes(), XDP_PASS, GUARD_REASON_ALLOW_CLEAN);
    }
    // A list rule decides before a dynamic block; an allowlist wins over both.
    g.dynblock("ads.example", GUARD_ACTION_REFUSED, 60_000_000_000);
    let q3 = Dns::query("x.ads.example");
    let fr3 = Frame::v4(q3.bytes());
    g.expect_reply("listed", &fr3.bytes(), GUARD_REASON_BLOCK_SUFFIX, &fr3.reply(q3.reply(NXDOMAIN, false, None)).bytes());
    g.dynblock("allowed.example", GUARD_ACTION_REFUSED, 60_000_000_000);
    g.expect("allowlisted", &Frame::v4(Dns::query("x.allowed.example").bytes()).bytes(), XDP_PASS, GUARD_REASON_ALLOW_ALLOWLIST);

    // A dry run (xdp.action: log) logs and passes.
    g.config(guard_config { dynblocks: 3, block_action: GUARD_ACTION_LOG as u8, ..base_config() });
    g.expect("dry run", &fr.bytes(), XDP_PASS, GUARD_REASON_BLOCK_DYNAMIC);
    g.events();

    // The kernel honours the deadline itself: an expired block is none.
    g.dynblock("victim.example", GUARD_ACTION_REFUSED, -1);
    g.expect("expired", &fr.bytes(), XDP_PASS, GUARD_REASON_ALLOW_CLEAN);
    // And with the count at 0 the map is not even looked at.
    g.dynblock("victim.example", GUARD_ACTION_DROP, 60_000_000_000);
    g.config(guard_config { dynblocks: 0, ..base_config() });
    g.expect("count 0", &fr.bytes(), XDP_PASS, GUARD_REASON_ALLOW_CLEAN);
    g.config(guard_config { dynblocks: 3, ..base_config() });
    g.expect("drop", &fr.bytes(), XDP_DROP, GUARD_REASON_BLOCK_DYNAMIC);
}

#[test]
fn case_is_ignored_and_echoed() {
    let Some(mut g) = Guard::load("case_is_ignored_and_echoed") else {
        return;
    };
    // 0x20 mixed case (as Unbound sends it) must match, and the reply must
    // echo the client's own case or the client drops it.
    let q = Dns::query("BlOcKeD.ExAmPlE");
    let fr = Frame::v4(q.bytes());
    g.expect_reply(
        "mixed case",
        &fr.bytes(),
        GUARD_REASON_BLOCK_EXACT,
        &fr.reply(q.reply(NXDOMAIN, false, None)).bytes(),
    );
    let ev = g.events();
    assert_eq!(
        &ev[0].qname[..17],
        &wire("blocked.example")[..],
        "event carries the lower-cased name"
    );
}

#[test]
fn ipv6_vlan_and_ip_options() {
    let Some(mut g) = Guard::load("ipv6_vlan_and_ip_options") else {
        return;
    };
    let q = Dns::query("x.ads.example");

    let fr = Frame::v6(q.bytes());
    g.expect_reply(
        "ipv6",
        &fr.bytes(),
        GUARD_REASON_BLOCK_SUFFIX,
        &fr.reply(q.reply(NXDOMAIN, false, None)).bytes(),
    );

    let fr = Frame {
        vlan: Some(0x2064),
        ..Frame::v4(q.bytes())
    };
    g.expect_reply(
        "vlan ipv4",
        &fr.bytes(),
        GUARD_REASON_BLOCK_SUFFIX,
        &fr.reply(q.reply(NXDOMAIN, false, None)).bytes(),
    );

    let fr = Frame {
        vlan: Some(7),
        ..Frame::v6(q.bytes())
    };
    g.expect_reply(
        "vlan ipv6",
        &fr.bytes(),
        GUARD_REASON_BLOCK_SUFFIX,
        &fr.reply(q.reply(NXDOMAIN, false, None)).bytes(),
    );

    // 8 bytes of options, a Record Route with one hop recorded and the end
    // of the list: ihl = 7. The query's route is not the reply's: the
    // reply keeps the header's length with every option byte a NOP.
    let fr = Frame {
        ip_options: vec![7, 7, 8, 198, 18, 0, 1, 0],
        ..Frame::v4(q.bytes())
    };
    let expected = Frame {
        ip_options: vec![1; 8],
        ..fr.clone()
    };
    g.expect_reply(
        "ipv4 options",
        &fr.bytes(),
        GUARD_REASON_BLOCK_SUFFIX,
        &expected.reply(q.reply(NXDOMAIN, false, None)).bytes(),
    );

    // Ethernet padding after the IP packet is not DNS: the reply is cut to
    // the computed length.
    let fr = Frame {
        padding: 9,
        ..Frame::v4(q.bytes())
    };
    g.expect_reply(
        "padded",
        &fr.bytes(),
        GUARD_REASON_BLOCK_SUFFIX,
        &fr.reply(q.reply(NXDOMAIN, false, None)).bytes(),
    );

    // Extra records after the question are cut.
    let mut qx = q.clone();
    qx.counts[2] = 1;
    qx.rest = vec![0, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 1, 2, 3, 4];
    let fr = Frame::v4(qx.bytes());
    g.expect_reply(
        "authority record",
        &fr.bytes(),
        GUARD_REASON_BLOCK_SUFFIX,
        &fr.reply(qx.reply(NXDOMAIN, false, None)).bytes(),
    );
}

#[test]
fn edns_and_flags() {
    let Some(mut g) = Guard::load("edns_and_flags") else {
        return;
    };
    let cookie = [0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]; // RFC 7873 client cookie
    for (what, q, opt) in [
        (
            "edns do=1",
            Dns::query("blocked.example").edns(4096, true, &cookie),
            Some(true),
        ),
        (
            "edns do=0",
            Dns::query("blocked.example").edns(1400, false, &[]),
            Some(false),
        ),
        ("no edns", Dns::query("blocked.example"), None),
        (
            "rd=0 cd=1 ad=1",
            Dns {
                flags: CD | AD,
                ..Dns::query("blocked.example").edns(512, true, &[])
            },
            Some(true),
        ),
        (
            "rd=1 cd=1",
            Dns {
                flags: RD | CD,
                ..Dns::query("blocked.example")
            },
            None,
        ),
    ] {
        let fr = Frame::v6(q.bytes());
        g.expect_reply(
            what,
            &fr.bytes(),
            GUARD_REASON_BLOCK_EXACT,
            &fr.reply(q.reply(NXDOMAIN, false, opt)).bytes(),
        );
    }
    // RFC 6891 6.1.3: EDNS version 1 gets BADVERS (extended RCODE 1 over a
    // header RCODE of 0) with our version, 0, and no TC, whatever the action.
    for action in [GUARD_ACTION_NXDOMAIN, GUARD_ACTION_REFUSED, GUARD_ACTION_TRUNCATE] {
        g.config(guard_config { block_action: action as u8, ..base_config() });
        let mut q = Dns::query("blocked.example").edns(4096, true, &[]);
        let version = q.rest.len() - 5; // owner, type, size, ext-rcode, *version*, flags, rdlen
        q.rest[version] = 1;
        let fr = Frame::v4(q.bytes());
        let mut want = q.reply(0, false, Some(true));
        let n = want.len();
        want[n - 6] = 1; // the OPT's extended RCODE
        g.expect_reply(
            &format!("edns version 1, {action:?}"),
            &fr.bytes(),
            GUARD_REASON_BLOCK_EXACT,
            &fr.reply(want).bytes(),
        );
    }
    g.config(base_config());
    // An OPT that is not the only extra record, or behind other records,
    // is not recognised: the reply goes out without one.
    let mut q = Dns::query("blocked.example").edns(4096, true, &[]);
    q.counts[3] = 2;
    q.rest
        .extend_from_slice(&[0, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 1, 2, 3, 4]);
    let fr = Frame::v4(q.bytes());
    g.expect_reply(
        "two additionals",
        &fr.bytes(),
        GUARD_REASON_BLOCK_EXACT,
        &fr.reply(q.reply(NXDOMAIN, false, None)).bytes(),
    );
    let mut q = Dns::query("blocked.example").edns(4096, true, &[]);
    q.counts[1] = 1;
    let fr = Frame::v4(q.bytes());
    g.expect_reply(
        "answer + opt",
        &fr.bytes(),
        GUARD_REASON_BLOCK_EXACT,
        &fr.reply(q.reply(NXDOMAIN, false, None)).bytes(),
    );
    // Truncated OPT (ARCOUNT=1 but fewer than 11 bytes left): stripped.
    let mut q = Dns::query("blocked.example").edns(4096, true, &[]);
    q.rest.truncate(6);
    let fr = Frame::v4(q.bytes());
    g.expect_reply(
        "short opt",
        &fr.bytes(),
        GUARD_REASON_BLOCK_EXACT,
        &fr.reply(q.reply(NXDOMAIN, false, None)).bytes(),
    );
}

#[test]
fn longest_names() {
    let Some(mut g) = Guard::load("longest_names") else {
        return;
    };
    let q = Dns::query(&long_name('b'));
    assert_eq!(q.qname.len(), 255);
    let fr = Frame::v4(q.bytes());
    g.expect_reply(
        "253-char blocked",
        &fr.bytes(),
        GUARD_REASON_BLOCK_EXACT,
        &fr.reply(q.reply(NXDOMAIN, false, None)).bytes(),
    );
    let fr = Frame {
        vlan: Some(1),
        ip_options: vec![1; 40],
        ..Frame::v4(q.edns(1232, true, &[]).bytes())
    };
    let q2 = Dns::query(&long_name('b')).edns(1232, true, &[]);
    g.expect_reply(
        "253-char, vlan, 40 bytes of options, edns",
        &fr.bytes(),
        GUARD_REASON_BLOCK_EXACT,
        &fr.reply(q2.reply(NXDOMAIN, false, Some(true))).bytes(),
    );
    let f = Frame::v6(Dns::query(&long_name('c')).bytes()).bytes();
    g.expect("253-char clean", &f, XDP_PASS, GUARD_REASON_ALLOW_CLEAN);
    // 127 one-byte labels: the most labels a name can have.
    let many = vec!["a"; 127].join(".");
    let f = Frame::v4(Dns::query(&many).bytes()).bytes();
    g.expect("127 labels", &f, XDP_PASS, GUARD_REASON_ALLOW_CLEAN);
    let ev = g.events();
    assert_eq!(ev[0].qname_len, 255);
    assert_eq!(&ev[0].qname[..255], &wire(&long_name('b'))[..]);
}

#[test]
fn malformed_queries_pass_and_are_logged() {
    let Some(mut g) = Guard::load("malformed_queries_pass_and_are_logged") else {
        return;
    };
    let good = Dns::query("www.example");
    let mut cases: Vec<(&str, Vec<u8>, guard_reason)> = Vec::new();

    let mut short = good.bytes();
    short.truncate(11);
    cases.push((
        "truncated header",
        short,
        GUARD_REASON_MALFORMED_TRUNCATED_HEADER,
    ));

    let mut l64 = Dns::query("x.example");
    l64.qname = [vec![64], vec![b'a'; 64], wire("example")].concat();
    cases.push((
        "label of 64",
        l64.bytes(),
        GUARD_REASON_MALFORMED_LABEL_TOO_LONG,
    ));

    let mut ptr = Dns::query("x.example");
    ptr.qname = vec![3, b'w', b'w', b'w', 0xc0, 12];
    cases.push((
        "compression pointer",
        ptr.bytes(),
        GUARD_REASON_MALFORMED_COMPRESSION,
    ));

    let mut qd2 = good.clone();
    qd2.counts[0] = 2;
    cases.push(("qdcount 2", qd2.bytes(), GUARD_REASON_MALFORMED_QDCOUNT));
    let mut qd0 = good.clone();
    qd0.counts[0] = 0;
    cases.push(("qdcount 0", qd0.bytes(), GUARD_REASON_MALFORMED_QDCOUNT));

    let status = Dns {
        flags: 2 << 11,
        ..good.clone()
    };
    cases.push((
        "opcode STATUS",
        status.bytes(),
        GUARD_REASON_MALFORMED_OPCODE,
    ));

    let mut long = Dns::query("x");
    long.qname = [wire(&long_name('d'))[..255 - 1].to_vec(), vec![1, b'x', 0]].concat();
    cases.push((
        "256-octet name",
        long.bytes(),
        GUARD_REASON_MALFORMED_NAME_TOO_LONG,
    ));

    let mut noq = good.bytes();
    noq.truncate(12 + good.qname.len() + 2);
    cases.push(("no qclass", noq, GUARD_REASON_MALFORMED_TRUNCATED_QUESTION));
    let mut cut = good.bytes();
    cut.truncate(12 + 3);
    cases.push((
        "name runs off the end",
        cut,
        GUARD_REASON_MALFORMED_TRUNCATED_QUESTION,
    ));

    for (what, payload, reason) in &cases {
        let f = Frame::v4(payload.clone()).bytes();
        g.expect(what, &f, XDP_PASS, *reason);
    }
    let ev = g.events();
    assert_eq!(ev.len(), cases.len(), "one event per malformed query");
    for (e, (what, _, reason)) in ev.iter().zip(&cases) {
        assert_eq!(
            e.verdict,
            guard_verdict::GUARD_VERDICT_MALFORMED as u8,
            "{what}"
        );
        assert_eq!(e.action, GUARD_ACTION_PASS as u8, "{what}");
        assert_eq!(e.reason, *reason as u8, "{what}");
        assert_eq!(e.family, 4, "{what}");
        assert_eq!(e.client_port, 40000, "{what}");
    }
}

#[test]
fn not_ours_passes_untouched() {
    let Some(mut g) = Guard::load("not_ours_passes_untouched") else {
        return;
    };
    let q = Dns::query("blocked.example");

    let resp = Dns {
        flags: 0x8180,
        ..q.clone()
    };
    g.expect(
        "response (QR=1)",
        &Frame::v4(resp.bytes()).bytes(),
        XDP_PASS,
        GUARD_REASON_PASS_NOT_QUERY,
    );

    let other_port = Frame {
        dport: 5353,
        ..Frame::v4(q.bytes())
    };
    g.expect(
        "port 5353",
        &other_port.bytes(),
        XDP_PASS,
        GUARD_REASON_PASS_NOT_DNS,
    );

    let hbh = Frame {
        hop_by_hop: true,
        ..Frame::v6(q.bytes())
    };
    g.expect(
        "ipv6 hop-by-hop",
        &hbh.bytes(),
        XDP_PASS,
        GUARD_REASON_PASS_IPV6_EXTHDR,
    );

    let frag = Frame {
        frag: true,
        ..Frame::v4(q.bytes())
    };
    g.expect(
        "ipv4 first fragment",
        &frag.bytes(),
        XDP_PASS,
        GUARD_REASON_PASS_NOT_DNS,
    );

    let mut arp = Frame::v4(q.bytes()).bytes();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    g.expect("arp ethertype", &arp, XDP_PASS, GUARD_REASON_PASS_NOT_DNS);

    let mut tcp = Frame::v4(q.bytes()).bytes();
    tcp[14 + 9] = 6;
    g.expect("tcp", &tcp, XDP_PASS, GUARD_REASON_PASS_NOT_DNS);

    let qinq = Frame {
        vlan: Some(5),
        ..Frame::v4(q.bytes())
    }
    .bytes();
    let mut qinq2 = qinq[..12].to_vec();
    qinq2.extend_from_slice(&[0x88, 0xa8, 0, 9]);
    qinq2.extend_from_slice(&qinq[12..]);
    g.expect("two vlan tags", &qinq2, XDP_PASS, GUARD_REASON_PASS_NOT_DNS);

    assert!(
        g.events().is_empty(),
        "passing what is not ours makes no events"
    );

    // Unconfigured: hands off, nothing counted.
    g.config(guard_config {
        abi_version: 0,
        ..base_config()
    });
    let run = g.run(&Frame::v4(q.bytes()).bytes());
    assert_eq!(run.verdict, XDP_PASS);
    assert!(run.moved.is_empty(), "unconfigured program counts nothing");
}

#[test]
fn no_table_means_clean() {
    let Some(mut g) = Guard::load("no_table_means_clean") else {
        return;
    };
    g.remove_table();
    let f = Frame::v4(Dns::query("blocked.example").bytes()).bytes();
    g.expect("no table", &f, XDP_PASS, GUARD_REASON_NO_TABLE);
    // The rate limit still applies without a table.
    g.config(guard_config {
        rl_qps: 1,
        rl_burst: 1,
        ..base_config()
    });
    g.expect("first", &f, XDP_PASS, GUARD_REASON_NO_TABLE);
    g.expect("second", &f, XDP_DROP, GUARD_REASON_RATELIMIT);
}

#[test]
fn malformed_queries_count_against_the_rate_limit() {
    let Some(mut g) = Guard::load("malformed_queries_count_against_the_rate_limit") else {
        return;
    };
    g.config(guard_config {
        rl_qps: 1,
        rl_burst: 1,
        rl_action: GUARD_ACTION_REFUSED as u8,
        ..base_config()
    });
    let mut short = Dns::query("www.example").bytes();
    short.truncate(11);
    let garbage = Frame::v4(short).bytes();
    g.expect("first, within the budget", &garbage, XDP_PASS, GUARD_REASON_MALFORMED_TRUNCATED_HEADER);
    // Over the rate: dropped, even with rl_action refused (no reply can be built).
    g.expect("second, over the rate", &garbage, XDP_DROP, GUARD_REASON_RATELIMIT);
    // Garbage spent the client's budget: its well-formed queries are limited too.
    let clean = Frame::v4(Dns::query("www.example").bytes()).bytes();
    let run = g.run(&clean);
    assert_ne!(run.verdict, XDP_PASS, "a client over its rate got a query through");
    let ev = g.events();
    let limited = ev.iter().filter(|e| e.verdict == guard_verdict::GUARD_VERDICT_RATELIMIT as u8).count();
    assert_eq!(limited, 2, "{ev:?}");
    assert_eq!(ev[1].action, GUARD_ACTION_DROP as u8);
    // A dry run counts and logs but never drops.
    g.config(guard_config {
        rl_qps: 1,
        rl_burst: 1,
        rl_action: GUARD_ACTION_LOG as u8,
        ..base_config()
    });
    g.expect("dry run", &garbage, XDP_PASS, GUARD_REASON_RATELIMIT);
}

#[test]
fn crowded_table_probes() {
    let Some(mut g) = Guard::load("crowded_table_probes") else {
        return;
    };
    // 14 names in 2 home buckets of 8: keys spill into overflow buckets,
    // so lookups must probe past a full home bucket.
    let names: Vec<String> = (0..14).map(|i| format!("n{i}.crowd.example")).collect();
    let rules: Vec<(String, u8)> = names.iter().map(|n| (n.clone(), BLOCK_SELF)).collect();
    g.table(&rules, 2);
    g.config(guard_config {
        block_action: GUARD_ACTION_DROP as u8,
        ..base_config()
    });
    for n in &names {
        g.expect(
            n,
            &Frame::v4(Dns::query(n).bytes()).bytes(),
            XDP_DROP,
            GUARD_REASON_BLOCK_EXACT,
        );
    }
    for n in ["n14.crowd.example", "crowd.example", "www.example"] {
        g.expect(
            n,
            &Frame::v4(Dns::query(n).bytes()).bytes(),
            XDP_PASS,
            GUARD_REASON_ALLOW_CLEAN,
        );
    }
}

/// The Bloom filter groups a name's suffixes in the block of its last two
/// labels (guard_abi.h); a group too big for one block spills to a block
/// per key. Both kinds must find every name.
#[test]
fn bloom_groups_and_spilled_blocks() {
    use guard_ebpf::table::bloom_block;

    let Some(mut g) = Guard::load("bloom_groups_and_spilled_blocks") else {
        return;
    };
    let mut rules: Vec<(String, u8)> = (0..300).map(|i| (format!("n{i}.hot.example"), BLOCK_SELF)).collect();
    // A small group whose block is not the hot group's, so not spilled.
    let spilled = |rules: &[(String, u8)], group: &str| {
        let t = build_table(rules, 64);
        let b = bloom_block(name_key(group), t.bloom.len() as u32) as usize;
        t.bloom[b].flags[0] as u32 & GUARD_BLOOM_SPILLED != 0
    };
    let small = (0..)
        .map(|j| format!("small{j}.example"))
        .find(|zone| {
            let mut r = rules.clone();
            r.push((format!("a.b.{zone}"), BLOCK_SELF));
            !spilled(&r, zone)
        })
        .unwrap();
    rules.push((format!("a.b.{small}"), BLOCK_SELF));
    rules.push((format!("x.{small}"), BLOCK_SELF));
    rules.push((format!("sub.{small}"), BLOCK_SUB));
    assert!(spilled(&rules, "hot.example"), "the 300-name group must spill");
    assert!(!spilled(&rules, &small), "{small} must keep its group block");
    g.table(&rules, 64);
    g.config(guard_config {
        block_action: GUARD_ACTION_DROP as u8,
        ..base_config()
    });
    for (n, _) in &rules {
        let reason = if n.starts_with("sub.") { continue } else { GUARD_REASON_BLOCK_EXACT };
        g.expect(n, &Frame::v4(Dns::query(n).bytes()).bytes(), XDP_DROP, reason);
    }
    let deep = format!("q.r.sub.{small}");
    g.expect(&deep, &Frame::v4(Dns::query(&deep).bytes()).bytes(), XDP_DROP, GUARD_REASON_BLOCK_SUFFIX);
    for n in [
        "n300.hot.example".to_string(),
        "hot.example".into(),
        format!("w.a.b.{small}"),
        format!("b.{small}"),
        small.clone(),
        format!("sub.{small}"),
    ] {
        g.expect(&n, &Frame::v4(Dns::query(&n).bytes()).bytes(), XDP_PASS, GUARD_REASON_ALLOW_CLEAN);
    }
}

/// Deep marks (guard_abi.h): the walk stops at a name's two-label group
/// when the group's block has no mark for it. Shown by removing the one mark
/// by hand: the deeper rule then goes unseen. With the table's DEEP_MARKS
/// flag cleared, or while a dynamic block is live, the kernel walks every
/// label and finds it again.
#[test]
fn deep_marks_end_the_walk_at_unmarked_groups() {
    use guard_ebpf::table::{bloom_block, deep_bit};

    let Some(mut g) = Guard::load("deep_marks_end_the_walk_at_unmarked_groups") else {
        return;
    };
    g.config(guard_config {
        block_action: GUARD_ACTION_DROP as u8,
        ..base_config()
    });
    let rules = vec![("a.deep.example".to_string(), BLOCK_SELF), ("shallow.example".to_string(), BLOCK_SELF | BLOCK_SUB)];
    let deep = Frame::v4(Dns::query("a.deep.example").bytes()).bytes();
    let below_shallow = Frame::v4(Dns::query("x.y.shallow.example").bytes()).bytes();

    let mut table = build_table(&rules, 64);
    let group = name_key("deep.example");
    assert_ne!(table.header.flags & GUARD_TABLE_DEEP_MARKS, 0, "a table with a Bloom filter carries deep marks");
    assert!(table.walk_goes_past(group), "deep.example holds a longer name: marked");
    assert!(!table.walk_goes_past(name_key("shallow.example")), "shallow.example holds none: unmarked");
    g.install(&table);
    g.expect("a.deep.example", &deep, XDP_DROP, GUARD_REASON_BLOCK_EXACT);
    // The walk stops at shallow.example, which is the rule it needs.
    g.expect("x.y.shallow.example", &below_shallow, XDP_DROP, GUARD_REASON_BLOCK_SUFFIX);

    let block = bloom_block(group, table.bloom.len() as u32) as usize;
    let bit = deep_bit(group);
    table.bloom[block].flags[(bit / 8) as usize] &= !(1 << (bit % 8));
    assert!(!table.walk_goes_past(group));
    g.install(&table);
    g.expect("a.deep.example, its mark removed", &deep, XDP_PASS, GUARD_REASON_ALLOW_CLEAN);

    table.header.flags = 0;
    g.install(&table);
    g.expect("a.deep.example, marks off", &deep, XDP_DROP, GUARD_REASON_BLOCK_EXACT);

    table.header.flags = GUARD_TABLE_DEEP_MARKS;
    g.install(&table);
    g.dynblock("elsewhere.example", GUARD_ACTION_REFUSED, 60_000_000_000);
    g.config(guard_config {
        block_action: GUARD_ACTION_DROP as u8,
        dynblocks: 1,
        ..base_config()
    });
    g.expect("a.deep.example, a dynamic block live", &deep, XDP_DROP, GUARD_REASON_BLOCK_EXACT);
}

/// An empty table (a node that only rate-limits) ends the match before the
/// walk, as its header's name count says there is nothing to find. Shown by
/// a header that says 0 over a table that does hold a rule: the kernel
/// trusts it, except while dynamic blocks are live, which need the full walk.
#[test]
fn empty_tables_end_the_match_before_the_walk() {
    let Some(mut g) = Guard::load("empty_tables_end_the_match_before_the_walk") else {
        return;
    };
    g.config(guard_config {
        block_action: GUARD_ACTION_DROP as u8,
        ..base_config()
    });
    let clean = Frame::v4(Dns::query("www.example.org").bytes()).bytes();
    let ads = Frame::v4(Dns::query("ads.example").bytes()).bytes();
    let victim_sub = Frame::v4(Dns::query("x1.victim.example").bytes()).bytes();

    let empty = build_table(&[], 64);
    assert_eq!(empty.header.nnames, 0);
    g.install(&empty);
    g.expect("clean name, empty table", &clean, XDP_PASS, GUARD_REASON_ALLOW_CLEAN);
    g.dynblock("victim.example", GUARD_ACTION_DROP, 60_000_000_000);
    g.config(guard_config {
        block_action: GUARD_ACTION_DROP as u8,
        dynblocks: 1,
        ..base_config()
    });
    g.expect("dynamic block, empty table", &victim_sub, XDP_DROP, GUARD_REASON_BLOCK_DYNAMIC);

    let mut table = build_table(&[("ads.example".to_string(), BLOCK_SELF)], 64);
    table.header.nnames = 0;
    g.install(&table);
    g.expect("a rule, header says empty, dynamic block live", &ads, XDP_DROP, GUARD_REASON_BLOCK_EXACT);
    g.config(guard_config {
        block_action: GUARD_ACTION_DROP as u8,
        ..base_config()
    });
    g.expect("a rule, header says empty", &ads, XDP_PASS, GUARD_REASON_ALLOW_CLEAN);
    table.header.nnames = 1;
    g.install(&table);
    g.expect("a rule, header says one", &ads, XDP_DROP, GUARD_REASON_BLOCK_EXACT);
}

/// GUARD_TABLE_NO_TLD_NAMES: a table whose compiler found no single-label
/// name lets the walk skip the top-level label's lookup. Shown by setting
/// the flag by hand on a table that does hold one (`||zip^`): the kernel
/// trusts it and no longer finds that rule, while two-label rules still match.
#[test]
fn tables_without_single_label_names_skip_the_top_level() {
    let Some(mut g) = Guard::load("tables_without_single_label_names_skip_the_top_level") else {
        return;
    };
    g.config(guard_config {
        block_action: GUARD_ACTION_DROP as u8,
        ..base_config()
    });
    let rules = vec![("zip".to_string(), BLOCK_SELF | BLOCK_SUB), ("ads.example".to_string(), BLOCK_SELF)];
    let under_zip = Frame::v4(Dns::query("file.zip").bytes()).bytes();
    let ads = Frame::v4(Dns::query("ads.example").bytes()).bytes();

    let mut table = build_table(&rules, 64);
    assert_eq!(table.header.flags & GUARD_TABLE_NO_TLD_NAMES, 0, "only the list compiler sets it");
    g.install(&table);
    g.expect("file.zip", &under_zip, XDP_DROP, GUARD_REASON_BLOCK_SUFFIX);
    g.expect("ads.example", &ads, XDP_DROP, GUARD_REASON_BLOCK_EXACT);

    table.header.flags |= GUARD_TABLE_NO_TLD_NAMES;
    g.install(&table);
    g.expect("file.zip, flag set", &under_zip, XDP_PASS, GUARD_REASON_ALLOW_CLEAN);
    g.expect("ads.example, flag set", &ads, XDP_DROP, GUARD_REASON_BLOCK_EXACT);
}

#[test]
fn rule_flags_force_the_action() {
    let Some(mut g) = Guard::load("rule_flags_force_the_action") else {
        return;
    };
    let drop = Frame::v4(Dns::query("drop.example").bytes()).bytes();
    let q = Dns::query("nx.example");
    let nx = Frame::v4(q.bytes());

    g.expect(
        "force drop over nxdomain",
        &drop,
        XDP_DROP,
        GUARD_REASON_BLOCK_EXACT,
    );
    g.config(guard_config {
        block_action: GUARD_ACTION_REFUSED as u8,
        ..base_config()
    });
    g.expect_reply(
        "force nxdomain over refused",
        &nx.bytes(),
        GUARD_REASON_BLOCK_EXACT,
        &nx.reply(q.reply(NXDOMAIN, false, None)).bytes(),
    );
    // Dry run wins over everything.
    g.config(guard_config {
        block_action: GUARD_ACTION_LOG as u8,
        ..base_config()
    });
    g.expect(
        "log over force drop",
        &drop,
        XDP_PASS,
        GUARD_REASON_BLOCK_EXACT,
    );
    g.expect(
        "log over force nxdomain",
        &nx.bytes(),
        XDP_PASS,
        GUARD_REASON_BLOCK_EXACT,
    );

    // A forced action applies to the kind of match it was given for. RPZ
    // "mixed.example CNAME rpz-drop." with "*.mixed.example CNAME .", and
    // "||subdrop.example^" with "*.subdrop.example CNAME rpz-drop.".
    let mut rules = base_rules();
    rules.push(("mixed.example".into(), BLOCK_SELF | FORCE_DROP | BLOCK_SUB | FORCE_NXDOMAIN_SUB));
    rules.push(("subdrop.example".into(), BLOCK_SELF | BLOCK_SUB | FORCE_DROP_SUB));
    g.table(&rules, 64);
    g.config(guard_config {
        block_action: GUARD_ACTION_REFUSED as u8,
        ..base_config()
    });
    let f = Frame::v4(Dns::query("mixed.example").bytes()).bytes();
    g.expect("the name's own force: drop", &f, XDP_DROP, GUARD_REASON_BLOCK_EXACT);
    let q = Dns::query("a.mixed.example");
    let fr = Frame::v4(q.bytes());
    g.expect_reply(
        "the subdomains' force: nxdomain",
        &fr.bytes(),
        GUARD_REASON_BLOCK_SUFFIX,
        &fr.reply(q.reply(NXDOMAIN, false, None)).bytes(),
    );
    let q = Dns::query("subdrop.example");
    let fr = Frame::v4(q.bytes());
    g.expect_reply(
        "no force on the name: the configured refused",
        &fr.bytes(),
        GUARD_REASON_BLOCK_EXACT,
        &fr.reply(q.reply(REFUSED, false, None)).bytes(),
    );
    let f = Frame::v4(Dns::query("x.y.subdrop.example").bytes()).bytes();
    g.expect("the subdomains' force: drop", &f, XDP_DROP, GUARD_REASON_BLOCK_SUFFIX);
}

/// The limiter's clock is coarse (guard_ratelimit.h): it stands still for
/// a tick. A client allowed more queries per second than there are ticks
/// must still get its rate within one tick, not one query per tick.
#[test]
fn rate_limit_faster_than_the_clock_tick() {
    let Some(mut g) = Guard::load("rate_limit_faster_than_the_clock_tick") else {
        return;
    };
    g.config(guard_config {
        rl_qps: 1_000_000,
        rl_burst: 1,
        rl_action: GUARD_ACTION_DROP as u8,
        ..base_config()
    });
    let f = Frame::v4(Dns::query("www.clean.example").bytes()).from([10, 99, 0, 1]).bytes();
    for i in 0..100 {
        g.expect(&format!("query {i} at 1M qps"), &f, XDP_PASS, GUARD_REASON_ALLOW_CLEAN);
    }
}

#[test]
fn rate_limit_per_prefix() {
    let Some(mut g) = Guard::load("rate_limit_per_prefix") else {
        return;
    };
    // 1 qps with a burst of 3: three queries conform, the fourth is over.
    let clean = Dns::query("www.clean.example");
    for (i, (action, verdict)) in [
        (GUARD_ACTION_DROP, XDP_DROP),
        (GUARD_ACTION_TRUNCATE, XDP_TX),
        (GUARD_ACTION_REFUSED, XDP_TX),
        (GUARD_ACTION_NXDOMAIN, XDP_TX),
        (GUARD_ACTION_PASS, XDP_PASS),
        (GUARD_ACTION_LOG, XDP_PASS),
    ]
    .into_iter()
    .enumerate()
    {
        g.config(guard_config {
            rl_qps: 1,
            rl_burst: 3,
            rl_action: action as u8,
            ..base_config()
        });
        // Each action gets its own /24; clients .1 to .4 share it.
        let net = 10 + i as u8;
        for host in 1..=3u8 {
            let f = Frame::v4(clean.bytes()).from([10, net, 0, host]).bytes();
            g.expect(
                &format!("{action:?} burst {host}"),
                &f,
                XDP_PASS,
                GUARD_REASON_ALLOW_CLEAN,
            );
        }
        let fr = Frame::v4(clean.bytes()).from([10, net, 0, 4]);
        let what = format!("{action:?} over rate");
        match verdict {
            XDP_TX => {
                let (rcode, tc) = match action {
                    GUARD_ACTION_TRUNCATE => (0, true),
                    GUARD_ACTION_REFUSED => (REFUSED, false),
                    _ => (NXDOMAIN, false),
                };
                g.expect_reply(
                    &what,
                    &fr.bytes(),
                    GUARD_REASON_RATELIMIT,
                    &fr.reply(clean.reply(rcode, tc, None)).bytes(),
                );
            }
            _ if action == GUARD_ACTION_LOG => {
                // A dry run counts the query over its rate, then as what
                // happens to it: here it passes as clean.
                let run = g.run(&fr.bytes());
                assert_eq!(run.verdict, XDP_PASS, "{what}");
                assert_eq!(
                    run.moved,
                    vec![(GUARD_REASON_ALLOW_CLEAN as u32, 1), (GUARD_REASON_RATELIMIT as u32, 1)],
                    "{what}: counters"
                );
            }
            v => {
                g.expect(&what, &fr.bytes(), v, GUARD_REASON_RATELIMIT);
            }
        }
        // Another /24 is not affected.
        let other = Frame::v4(clean.bytes()).from([10, net, 1, 1]).bytes();
        g.expect(
            &format!("{action:?} other prefix"),
            &other,
            XDP_PASS,
            GUARD_REASON_ALLOW_CLEAN,
        );
        let ev = g.events();
        assert_eq!(ev.len(), 1, "{what}: one event");
        assert_eq!(ev[0].verdict, guard_verdict::GUARD_VERDICT_RATELIMIT as u8);
        assert_eq!(ev[0].reason, GUARD_REASON_RATELIMIT as u8);
        assert_eq!(ev[0].action, action as u8);
        assert_eq!(&ev[0].client_addr[..4], &[10, net, 0, 4]);
    }

    // Over-rate wins over a block and over the allowlist; IPv6 shares by /56.
    g.config(guard_config {
        rl_qps: 1,
        rl_burst: 2,
        rl_action: GUARD_ACTION_DROP as u8,
        ..base_config()
    });
    let blocked = Dns::query("blocked.example");
    let fr = Frame::v6(blocked.bytes());
    g.expect_reply(
        "v6 first",
        &fr.bytes(),
        GUARD_REASON_BLOCK_EXACT,
        &fr.reply(blocked.reply(NXDOMAIN, false, None)).bytes(),
    );
    let mut other_host = CLIENT6;
    other_host[7] = 0xff; // same /56
    other_host[15] = 0x99;
    let f = Frame {
        src: other_host,
        ..Frame::v6(Dns::query("allowed.example").bytes())
    }
    .bytes();
    g.expect(
        "v6 allowlisted, same /56",
        &f,
        XDP_PASS,
        GUARD_REASON_ALLOW_ALLOWLIST,
    );
    g.expect(
        "v6 blocked, over rate",
        &fr.bytes(),
        XDP_DROP,
        GUARD_REASON_RATELIMIT,
    );
    let f = Frame {
        src: other_host,
        ..Frame::v6(Dns::query("allowed.example").bytes())
    }
    .bytes();
    g.expect(
        "v6 allowlisted, over rate",
        &f,
        XDP_DROP,
        GUARD_REASON_RATELIMIT,
    );
    let mut next56 = CLIENT6;
    next56[6] = 0x01;
    let f = Frame {
        src: next56,
        ..Frame::v6(Dns::query("www.example").bytes())
    }
    .bytes();
    g.expect("v6 next /56", &f, XDP_PASS, GUARD_REASON_ALLOW_CLEAN);
    let ev = g.events();
    assert_eq!(
        ev[1].rule_id,
        name_key("blocked.example"),
        "a rate-limited block keeps its rule id"
    );
}

/// A blocked query sent to a group address (mDNS on a configured 5353, a
/// broadcast) is never answered: the reply would come from that address
/// (RFC 1122). It passes, logged as a reply that could not be built.
#[test]
fn queries_to_group_addresses_pass_unanswered() {
    let Some(mut g) = Guard::load("queries_to_group_addresses_pass_unanswered") else {
        return;
    };
    g.config(base_config());
    let blocked = Dns::query("blocked.example").bytes();
    let mut mdns6 = [0u8; 16];
    mdns6[0] = 0xff;
    mdns6[1] = 0x02;
    mdns6[15] = 0xfb;
    let cases = [
        ("IPv4 multicast", Frame { dmac: [0x01, 0, 0x5e, 0, 0, 0xfb], dst: v4([224, 0, 0, 251]), ..Frame::v4(blocked.clone()) }),
        ("IPv4 broadcast", Frame { dmac: [0xff; 6], dst: v4([255, 255, 255, 255]), ..Frame::v4(blocked.clone()) }),
        ("IPv4 multicast, unicast MAC", Frame { dst: v4([239, 1, 2, 3]), ..Frame::v4(blocked.clone()) }),
        ("IPv6 multicast", Frame { dmac: [0x33, 0x33, 0, 0, 0, 0xfb], dst: mdns6, ..Frame::v6(blocked.clone()) }),
        ("IPv6 multicast, unicast MAC", Frame { dst: mdns6, ..Frame::v6(blocked.clone()) }),
        ("group MAC, unicast IP", Frame { dmac: [0x01, 0, 0x5e, 0, 0, 1], ..Frame::v4(blocked.clone()) }),
    ];
    for (what, f) in cases {
        g.expect(what, &f.bytes(), XDP_PASS, GUARD_REASON_TX_FAILED);
    }
    // The same query to the server's own address is answered.
    let f = Frame::v4(blocked.clone());
    let run = g.run(&f.bytes());
    assert_eq!(run.verdict, XDP_TX, "unicast");
}

/// A rate-limit dry run (`ratelimit.action: log`) must not lift a block: a
/// blocked name from a client over its rate is still answered, and logged
/// twice, as the limit it would have hit and as the block.
#[test]
fn a_rate_limit_dry_run_still_blocks() {
    let Some(mut g) = Guard::load("a_rate_limit_dry_run_still_blocks") else {
        return;
    };
    g.config(guard_config {
        rl_qps: 1,
        rl_burst: 1,
        rl_action: GUARD_ACTION_LOG as u8,
        ..base_config()
    });
    let blocked = Dns::query("blocked.example");
    let fr = Frame::v4(blocked.bytes()).from([10, 77, 0, 1]);
    let reply = fr.reply(blocked.reply(NXDOMAIN, false, None)).bytes();
    g.expect_reply("within the rate", &fr.bytes(), GUARD_REASON_BLOCK_EXACT, &reply);
    let run = g.run(&fr.bytes());
    assert_eq!(run.verdict, XDP_TX, "over the rate in a dry run: the block must hold");
    assert_eq!(hex(&run.out), hex(&reply));
    let replies = guard_stat::GUARD_STAT_REPLIES_TX as u32;
    assert_eq!(
        run.moved,
        vec![(GUARD_REASON_BLOCK_EXACT as u32, 1), (GUARD_REASON_RATELIMIT as u32, 1), (replies, 1)],
        "counters"
    );
    let ev = g.events();
    let seen: Vec<_> = ev.iter().map(|e| (e.verdict, e.action)).collect();
    let block = (guard_verdict::GUARD_VERDICT_BLOCK as u8, GUARD_ACTION_NXDOMAIN as u8);
    let limit = (guard_verdict::GUARD_VERDICT_RATELIMIT as u8, GUARD_ACTION_LOG as u8);
    assert_eq!(seen, [block, limit, block]);
    assert_eq!(ev[1].rule_id, ev[2].rule_id, "the limit's line names the rule too");
    assert_ne!(ev[1].qname_len, 0, "the limit's line carries the name");
}

#[test]
fn event_contents() {
    let Some(mut g) = Guard::load("event_contents") else {
        return;
    };
    let q = Dns {
        qtype: 28,
        ..Dns::query("Tracker.ADS.example")
    };
    let fr = Frame {
        sport: 51234,
        ..Frame::v6(q.bytes())
    };
    g.expect_reply(
        "aaaa",
        &fr.bytes(),
        GUARD_REASON_BLOCK_SUFFIX,
        &fr.reply(q.reply(NXDOMAIN, false, None)).bytes(),
    );
    let ev = g.events();
    assert_eq!(ev.len(), 1);
    let e = &ev[0];
    let name = wire("tracker.ads.example");
    assert!(e.ts_ns > 0);
    assert_eq!(e.rule_id, name_key("ads.example"));
    assert_eq!(e.client_addr, CLIENT6);
    assert_eq!(e.client_port, 51234);
    assert_eq!(e.qtype, 28);
    assert_eq!(e.qname_len as usize, name.len());
    assert_eq!(&e.qname[..name.len()], &name[..]);
    assert!(
        e.qname[name.len()..].iter().all(|&b| b == 0),
        "no stale bytes after the name"
    );
    assert_eq!(e.family, 6);
    assert_eq!(e.verdict, guard_verdict::GUARD_VERDICT_BLOCK as u8);
    assert_eq!(e.action, GUARD_ACTION_NXDOMAIN as u8);
    assert_eq!(e.reason, GUARD_REASON_BLOCK_SUFFIX as u8);

    // A short name after a long one leaves nothing of the long one behind.
    g.config(guard_config {
        block_action: GUARD_ACTION_DROP as u8,
        ..base_config()
    });
    let f = Frame::v4(Dns::query(&long_name('b')).bytes()).bytes();
    g.expect("long", &f, XDP_DROP, GUARD_REASON_BLOCK_EXACT);
    let f = Frame::v4(Dns::query("ads.example").bytes())
        .from([203, 0, 113, 7])
        .bytes();
    g.expect("short", &f, XDP_DROP, GUARD_REASON_BLOCK_EXACT);
    let ev = g.events();
    let e = &ev[1];
    let name = wire("ads.example");
    assert_eq!(e.family, 4);
    assert_eq!(e.client_addr, v4([203, 0, 113, 7]));
    assert_eq!(e.action, GUARD_ACTION_DROP as u8);
    assert_eq!(&e.qname[..name.len()], &name[..]);
    assert!(
        e.qname[name.len()..].iter().all(|&b| b == 0),
        "no stale bytes after the name"
    );
}

/// xorshift64*: a fixed-seed generator, so a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn garbage_always_passes() {
    let Some(mut g) = Guard::load("garbage_always_passes") else {
        return;
    };
    g.config(guard_config {
        block_action: GUARD_ACTION_DROP as u8,
        ..base_config()
    });
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut by_reason = BTreeMap::new();
    for i in 0..1000 {
        // Half raw bytes, half random DNS payloads behind valid headers, so
        // the garbage also reaches the DNS parser.
        let len = 14 + (rng.next() % 300) as usize;
        let f = if i % 2 == 0 {
            rng.bytes(len)
        } else {
            let fr = if i % 4 == 1 {
                Frame::v4(rng.bytes(len))
            } else {
                Frame::v6(rng.bytes(len))
            };
            let mut f = fr.bytes();
            if i % 8 == 3 {
                // mostly-valid header: QR=0, opcode 0, QDCOUNT=1
                let dns = f.len() - len;
                f[dns + 2] &= 0x07;
                f[dns + 4] = 0;
                f[dns + 5] = 1;
            }
            f
        };
        let run = g.run(&f);
        assert_eq!(
            run.verdict,
            XDP_PASS,
            "garbage #{i} got verdict {}: {}",
            run.verdict,
            hex(&f)
        );
        assert_eq!(run.out, f, "garbage #{i} was modified");
        let reasons: Vec<_> = run
            .moved
            .iter()
            .filter(|(r, _)| *r < GUARD_REASON__COUNT as u32)
            .collect();
        assert_eq!(
            reasons.len(),
            1,
            "garbage #{i}: exactly one reason: {:?}",
            run.moved
        );
        *by_reason.entry(reasons[0].0).or_insert(0) += 1;
    }
    eprintln!("garbage by reason: {by_reason:?}");
    assert!(
        by_reason.len() > 3,
        "the garbage should reach several parse stages"
    );
}

/// A full ring buffer costs events, never verdicts: every packet is still
/// judged and counted by its reason, and each event the ring could not take
/// is counted as lost (`dns_guard_xdp_events_lost_total`), so that
/// received + lost = decisions. The per-packet cost lives in
/// `cargo bench -p dns-guard --bench xdp`, not here.
#[test]
fn a_full_ring_buffer_counts_lost_events_and_keeps_judging() {
    let Some(mut g) = Guard::load("a_full_ring_buffer_counts_lost_events_and_keeps_judging") else {
        return;
    };
    g.config(guard_config {
        block_action: GUARD_ACTION_DROP as u8,
        ..base_config()
    });
    // The ring holds 1 MiB: a few thousand events. Nobody drains it while
    // the kernel runs the same blocked query this many times.
    const REPEAT: u32 = 20_000;
    let f = Frame::v4(Dns::query("a.b.ads.example").bytes()).bytes();
    let before = g.stats();
    let prog: &Xdp = g.ebpf.program("dns_guard").unwrap().try_into().unwrap();
    let mut out = vec![0u8; f.len() + 64];
    let res = prog
        .test_run(TestRunOptions {
            data_in: Some(&f),
            data_out: Some(&mut out),
            repeat: REPEAT,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(res.return_value, XDP_DROP, "a blocked name is dropped on every run");
    let after = g.stats();
    let moved = |i: u32| after[i as usize] - before[i as usize];
    assert_eq!(
        moved(GUARD_REASON_BLOCK_SUFFIX as u32),
        u64::from(REPEAT),
        "every run is counted by its reason, ring full or not"
    );
    let lost = moved(guard_stat::GUARD_STAT_EVENTS_LOST as u32);
    let received = g.events().len() as u64;
    assert!(lost > 0, "{REPEAT} events cannot fit a 1 MiB ring; none was counted lost");
    assert!(received > 0, "the ring took no event at all");
    assert_eq!(received + lost, u64::from(REPEAT), "each decision is either an event or counted lost");
    // Drained, the ring takes events again.
    g.expect("after the drain", &f, XDP_DROP, GUARD_REASON_BLOCK_SUFFIX);
    assert_eq!(g.events().len(), 1, "a drained ring takes the next event");
}

/// A spray of source addresses cannot grow the limiter's memory or free a
/// flooding client from its limit: the buckets live in an LRU map of fixed
/// size (an LRU hash is always preallocated, so its kernel memory is set by
/// max_entries alone; what can go wrong is the count and the eviction), every
/// new source passes (a full map fails open), and a client that keeps sending
/// stays recently used, so the spray evicts the idle buckets, not its own.
#[test]
fn a_spray_of_sources_is_bounded_by_the_lru_and_the_flooder_stays_limited() {
    const MAX_CLIENTS: u32 = 1024;
    const SPRAY: u32 = 20_000;
    const FLOODER_EVERY: u32 = 50;
    let Some(mut g) = Guard::load_with_clients(
        "a_spray_of_sources_is_bounded_by_the_lru_and_the_flooder_stays_limited",
        Some(MAX_CLIENTS),
    ) else {
        return;
    };
    // 1 qps, burst 1, per /32: after its first query the flooder is over
    // rate for about a second, then earns one query per second.
    g.config(guard_config {
        rl_qps: 1,
        rl_burst: 1,
        ipv4_prefix: 32,
        rl_action: GUARD_ACTION_DROP as u8,
        ..base_config()
    });

    let q = Dns::query("www.clean.example");
    let flooder = Frame::v4(q.bytes()).from([10, 200, 0, 1]).bytes();
    let started = std::time::Instant::now();
    let (mut flooder_sent, mut flooder_passed) = (0u32, 0u32);
    for i in 0..SPRAY {
        // 10.0.0.0 to 10.0.78.31: every packet from a /32 never seen before.
        let src = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let run = g.run(&Frame::v4(q.bytes()).from(src).bytes());
        assert_eq!(run.verdict, XDP_PASS, "sprayed source {src:?} is new: it must pass");
        if i % FLOODER_EVERY == 0 {
            flooder_sent += 1;
            match g.run(&flooder).verdict {
                XDP_PASS => flooder_passed += 1,
                XDP_DROP => {}
                v => panic!("flooder got verdict {v}"),
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // GCRA at 1 qps, burst 1: the first query, then one per second.
    let allowed = 1 + elapsed.ceil() as u32;
    assert!(
        flooder_passed <= allowed,
        "the flooder got {flooder_passed} of {flooder_sent} through in {elapsed:.2} s (at most {allowed}): \
         the spray evicted its bucket"
    );

    let buckets: aya::maps::HashMap<_, guard_rl_key, guard_rl_state> =
        g.ebpf.map("guard_ratelimit").unwrap().try_into().unwrap();
    let live = buckets.keys().count() as u32;
    assert!(live <= MAX_CLIENTS, "{live} buckets in an LRU of {MAX_CLIENTS}");
    assert!(live >= MAX_CLIENTS / 2, "only {live} buckets after {SPRAY} sources: the map never filled");
    eprintln!(
        "spray: {SPRAY} sources, {live} buckets live, flooder {flooder_passed}/{flooder_sent} passed in {elapsed:.2} s"
    );
}
