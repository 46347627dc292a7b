//! XDP cost per query, kernel bytes per name and list load time.
//!
//! Runs the real program with BPF_PROG_TEST_RUN (no network), at 0, 100k
//! and 1M list entries (and more with `DG_BENCH_SIZES=0,100000,1000000,5000000`):
//! - clean, same packet repeated (cache-hot), median of rounds of 200k runs;
//! - clean, a different name every run (cold), median of 20k single runs;
//! - blocked name: a reply rewrites the packet in place and test_run does
//!   not restore it between repeats, so each blocked run is a single run;
//!   the clean single-run column beside it shows what a single run adds.
//! Needs root. `cargo bench -p dns-guard --bench xdp`; prints Markdown.

use std::{path::PathBuf, time::Instant};

use aya::programs::{TestRun, TestRunOptions};
use dns_guard::{
    ebpf::{abi::guard_action, AttachMode, RateLimitSettings, XdpGuard, XdpSettings},
    lists::{self, ListKind, RuleSet},
};

fn dns_query(name: &str, id: u16) -> Vec<u8> {
    let mut d = vec![(id >> 8) as u8, id as u8, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.') {
        d.push(l.len() as u8);
        d.extend_from_slice(l.as_bytes());
    }
    d.extend_from_slice(&[0, 0, 1, 0, 1]);
    d
}

/// Ethernet + IPv4 + UDP around a DNS payload (checksums are not checked
/// by the program on input, so they are left zero).
fn packet(name: &str) -> Vec<u8> {
    let dns = dns_query(name, 0x1234);
    let udp_len = 8 + dns.len();
    let ip_len = 20 + udp_len;
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    p.extend_from_slice(&[0x45, 0, (ip_len >> 8) as u8, ip_len as u8, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&[198, 18, 0, 11, 198, 18, 0, 53]);
    p.extend_from_slice(&[0xc3, 0x50, 0, 53, (udp_len >> 8) as u8, udp_len as u8, 0, 0]);
    p.extend_from_slice(&dns);
    p
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn run_ns(guard: &XdpGuard, pkt: &[u8], repeat: u32) -> (f64, u32) {
    let mut out = vec![0u8; 1600];
    let r = guard
        .program()
        .test_run(TestRunOptions { data_in: Some(pkt), data_out: Some(&mut out), repeat, ..Default::default() })
        .expect("test_run");
    (r.duration.as_nanos() as f64, r.return_value)
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: the XDP benchmark needs root (BPF_PROG_TEST_RUN)");
        return;
    }
    let sizes: Vec<usize> = std::env::var("DG_BENCH_SIZES")
        .unwrap_or_else(|_| "0,100000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("DG_BENCH_SIZES: comma-separated counts"))
        .collect();
    let pin_root = PathBuf::from(format!("/sys/fs/bpf/dg-bench-{}", std::process::id()));
    let settings = XdpSettings {
        interface: "lo".into(),
        mode: AttachMode::Generic,
        ports: vec![53],
        block_action: guard_action::GUARD_ACTION_NXDOMAIN,
        ratelimit: RateLimitSettings {
            qps: 0,
            burst: 1,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            action: guard_action::GUARD_ACTION_DROP,
            max_clients: 1024,
        },
        pin_dir: pin_root.clone(),
    };
    let result = std::panic::catch_unwind(|| bench(&settings, &pin_root, &sizes));
    let _ = std::fs::remove_dir_all(&pin_root);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn bench(settings: &XdpSettings, pin_root: &PathBuf, sizes: &[usize]) {
    let mut guard = XdpGuard::load_detached(settings, pin_root).expect("loading the XDP program");
    println!("| names | hosts parse + table build + kernel fill (ms) | kernel bytes/name | clean 4-label, same packet x200k (ns) | clean, same packet, single runs (ns) | clean 4-label, different names, single runs (ns) | blocked NXDOMAIN reply, single runs (ns) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &n in sizes {
        // A hosts file as users bring them: parse, compile and fill, timed.
        let text: String = (0..n).map(|i| format!("0.0.0.0 host{i}.ads-{}.example{}\n", i % 977, i % 13)).collect();
        let started = Instant::now();
        let mut rules = RuleSet::default();
        lists::parse_str(&text, std::path::Path::new("bench-hosts.txt"), ListKind::Block, &mut rules);
        let table = lists::table::compile(&rules, 0x5eed, 1).expect("table");
        let report = guard.install_table(&table).expect("install");
        let load_ms = started.elapsed().as_secs_f64() * 1e3;
        drop(text);

        let clean = packet("www.clean-site.example.org");
        assert_eq!(run_ns(&guard, &clean, 1).1, 2, "clean name must pass");
        let hot = median((0..7).map(|_| run_ns(&guard, &clean, 200_000).0).collect());

        let cold: Vec<Vec<u8>> = (0..20_000).map(|i| packet(&format!("w{i}.site{}.example.org", i * 7919))).collect();
        let cold_ns = median(cold.iter().map(|p| run_ns(&guard, p, 1).0).collect());

        let hot_single = median((0..20_000).map(|_| run_ns(&guard, &clean, 1).0).collect());
        let blocked_ns = if n > 0 {
            let blocked = packet("host1.ads-1.example1");
            assert_eq!(run_ns(&guard, &blocked, 1).1, 3, "blocked name must be answered with XDP_TX");
            format!("{:.0}", median((0..20_000).map(|_| run_ns(&guard, &blocked, 1).0).collect()))
        } else {
            "-".into()
        };
        let bpn = if n > 0 { format!("{:.2}", report.bytes_per_name()) } else { "-".into() };
        println!("| {n} | {load_ms:.0} | {bpn} | {hot:.1} | {hot_single:.0} | {cold_ns:.0} | {blocked_ns} |");
    }
}
