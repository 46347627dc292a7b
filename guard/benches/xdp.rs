//! XDP cost per query, kernel bytes per name and list load time.
//!
//! Runs the real program with BPF_PROG_TEST_RUN (no network), at 0, 100k
//! and 1M list entries (and more with `DG_BENCH_SIZES=0,100000,1000000,5000000`).
//! Needs root. `cargo bench -p dns-guard --bench xdp`; prints Markdown.
//! `DG_BENCH_SPIN_SECS=5` first spins that long on the hot mode of each
//! size, for `perf record -a` (`DG_BENCH_SPIN_DEEP=1`: on the mode "hot,
//! under a listed domain" instead). `DG_BENCH_JSON=path` also appends one JSON
//! object per size with every round's values (bench/peers.py reads it for
//! medians and spreads); `DG_BENCH_ROUNDS` and `DG_BENCH_SINGLES` shrink the
//! run for a smoke test.
//!
//! # Variants
//! `DG_BENCH_OBJECTS=label=path.o,label2=path2.o` adds other builds of
//! guard.bpf.c (same maps and ABI) beside the built-in one ("built-in").
//! The path `builtin` is the built-in object again, and a `@rl` suffix
//! (`rl=builtin@rl`) turns the rate limit on for that variant, at a rate
//! (10^9 qps, burst 10^6) no bench packet reaches: its cost, not its drops.
//! The default settings (`XdpSettings::unattached`) have it off (qps 0).
//! Each gets its own maps and the same table; within a round they run one
//! after another, each beside the floor, the order rotating by round, so
//! the rows of one run are an interleaved A/B.
//!
//! # The floor
//! Every number is reported as `ours − floor = net`. The floor is an XDP
//! program that only returns XDP_PASS (`guard_ebpf::XDP_PASS_OBJECT`), run
//! on the same packets, in the same mode and round, interleaved with ours
//! call by call (single runs) or round by round (repeats), so machine noise
//! hits both. Reported values are medians over `ROUNDS` rounds of per-round
//! medians.
//!
//! # Modes
//! - **hot**: one clean 4-label packet, `repeat = 200k` in one test_run. The
//!   kernel times the whole loop and divides, so per-call overhead vanishes;
//!   what remains of the floor (~6–8 ns) is test_run's per-repeat context
//!   reset and the indirect call. Its name (`www.clean-site.example.org`)
//!   is under a domain no listed name is below, so the walk stops after its
//!   last two labels (deep marks, guard_abi.h), as it does for most queries.
//! - **hot, under a listed domain**: the same, for a clean 4-label name
//!   under a domain the list has names below (`www.clean-site.ads-1.example1`
//!   beside `host1.ads-1.example1`): the deep mark is set and every label is
//!   hashed and tested. The worst case of the walk for a 4-label name.
//! - **single**: the same packet, `repeat = 1`. Each call's duration carries
//!   test_run's fixed cost (two clock reads, setup, teardown: ~200–300 ns on
//!   this machine, and most of the noise); net of the floor it shows what a
//!   cache-cold-ish single run of our program costs.
//! - **cold**: a different name every call (so its table buckets are not in
//!   L1/L2), `repeat = 1` since test_run cannot vary the packet between
//!   repeats. Measured two ways in the same calls:
//!   - `test_run` duration minus the floor's single-run duration: simple, but
//!     it subtracts two ~250 ns numbers to get a ~100 ns one;
//!   - **bpf_stats** (`BPF_ENABLE_STATS`, held only during this mode): the
//!     kernel's `__bpf_prog_run` wraps every run, test_run included, in two
//!     `sched_clock()` reads and adds the difference to the program's
//!     `run_time_ns`. Reading that after each call gives the program's own
//!     time without test_run's timer and syscall. Those two clock reads are
//!     themselves inside the window, which is what the floor (measured the
//!     same way) removes. This is the headline cold number.
//!
//!   BPF_F_TEST_XDP_LIVE_FRAMES was rejected: it can repeat but still
//!   sends one identical frame, and for XDP_PASS it builds an skb and runs
//!   the stack, which the timer includes.
//! - **cold, new suffix**: like cold, but the last two labels are new in
//!   every name too (`w<i>.s<j>.ex<j>.org`); bpf_stats only. The cold names
//!   above all end in `example.org`, and the Bloom filter picks its block by
//!   the last two labels, so this is the case that still misses it.
//! - **blocked**: a blocked name answered NXDOMAIN. A reply rewrites the
//!   packet in place and test_run does not restore it between repeats, so
//!   these are single runs.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    sys::{enable_stats, Stats},
    Ebpf,
};
use dns_guard::{
    ebpf::{XdpGuard, XdpSettings},
    lists::{self, ListKind, RuleSet},
};

/// Rounds per mode; each number is the median of the per-round medians.
const ROUNDS: usize = 7;
/// Repeats of one test_run in the hot mode.
const HOT_REPEAT: u32 = 200_000;
/// Single calls per round, per program, in the single-run modes.
const SINGLES: usize = 3_000;

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name).map_or(default, |s| s.trim().parse().unwrap_or_else(|_| panic!("{name}: a count")))
}

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

/// One test_run: (ns per run as the kernel timed it, XDP verdict).
fn run_ns(prog: &Xdp, pkt: &[u8], repeat: u32, out: &mut [u8]) -> (f64, u32) {
    let r = prog
        .test_run(TestRunOptions { data_in: Some(pkt), data_out: Some(out), repeat, ..Default::default() })
        .expect("test_run");
    (r.duration.as_nanos() as f64, r.return_value)
}

/// The program's accumulated bpf_stats run time, ns.
fn stats_ns(prog: &Xdp) -> f64 {
    prog.info().expect("prog info").run_time().as_nanos() as f64
}

/// Ours and the floor of one mode: medians over rounds.
#[derive(Default)]
struct Pair {
    ours: Vec<f64>,
    floor: Vec<f64>,
}

impl Pair {
    fn push(&mut self, ours: f64, floor: f64) {
        self.ours.push(ours);
        self.floor.push(floor);
    }

    /// Every round's values, for DG_BENCH_JSON.
    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "ours": self.ours, "floor": self.floor })
    }

    /// `net (ours − floor)`, as printed in the table.
    fn cell(&self) -> String {
        let (o, f) = (median(self.ours.clone()), median(self.floor.clone()));
        format!("**{:.0}** ({o:.0} − {f:.0})", o - f)
    }
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
    let settings = XdpSettings::unattached(pin_root.clone());
    let runs = Runs {
        rounds: env_count("DG_BENCH_ROUNDS", ROUNDS).max(1),
        singles: env_count("DG_BENCH_SINGLES", SINGLES).max(1),
        json: std::env::var_os("DG_BENCH_JSON").map(PathBuf::from),
    };
    let result = std::panic::catch_unwind(|| bench(&settings, &pin_root, &sizes, &runs));
    let _ = std::fs::remove_dir_all(&pin_root);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// How much to run, and where the per-round values go.
struct Runs {
    rounds: usize,
    singles: usize,
    json: Option<PathBuf>,
}

/// One build of the program under test.
struct Variant {
    label: String,
    guard: XdpGuard,
}

/// Every mode of one variant at one size.
#[derive(Default)]
struct Modes {
    hot: Pair,
    hot_deep: Pair,
    single: Pair,
    cold_tr: Pair,
    cold_st: Pair,
    cold_new: Pair,
    blk: Pair,
}

fn bench(settings: &XdpSettings, pin_root: &Path, sizes: &[usize], runs: &Runs) {
    let Runs { rounds, singles, .. } = *runs;
    let mut objects: Vec<(String, Vec<u8>, bool)> = vec![("built-in".into(), guard_ebpf::XDP_OBJECT.to_vec(), false)];
    if let Ok(list) = std::env::var("DG_BENCH_OBJECTS") {
        for item in list.split(',').filter(|s| !s.trim().is_empty()) {
            let (label, path) = item.split_once('=').expect("DG_BENCH_OBJECTS: label=path,...");
            let (path, rl) = match path.trim().strip_suffix("@rl") {
                Some(p) => (p, true),
                None => (path.trim(), false),
            };
            let bytes = if path == "builtin" {
                guard_ebpf::XDP_OBJECT.to_vec()
            } else {
                std::fs::read(path).unwrap_or_else(|e| panic!("DG_BENCH_OBJECTS: {path}: {e}"))
            };
            objects.push((label.trim().into(), bytes, rl));
        }
    }
    let mut rl_settings = settings.clone();
    rl_settings.ratelimit.qps = 1_000_000_000;
    rl_settings.ratelimit.burst = 1_000_000;
    let mut variants: Vec<Variant> = objects
        .iter()
        .enumerate()
        .map(|(i, (label, obj, rl))| Variant {
            label: label.clone(),
            guard: XdpGuard::load_detached_object(if *rl { &rl_settings } else { settings }, &pin_root.join(format!("v{i}")), obj)
                .unwrap_or_else(|e| panic!("loading {label}: {e}")),
        })
        .collect();
    let mut floor_obj = Ebpf::load(guard_ebpf::XDP_PASS_OBJECT).expect("loading xdp_pass");
    let floor: &mut Xdp = floor_obj.program_mut("xdp_pass").expect("xdp_pass").try_into().expect("an XDP program");
    floor.load().expect("loading xdp_pass");
    let floor: &Xdp = floor;
    let mut out = vec![0u8; 1600];

    for v in &variants {
        let verified = v.guard.program().info().ok().and_then(|i| i.verified_instruction_count());
        println!("{}: {} instructions verified", v.label, verified.map_or("?".into(), |n| n.to_string()));
    }
    println!("\ncells are **net** (dns_guard − xdp_pass floor), ns per query, median of {rounds} rounds\n");
    println!("| names | variant | parse + build + fill (ms) | bytes/name | hot: same packet ×{}k | hot, under a listed domain | single runs, same packet | cold: different names, test_run − floor | **cold: different names, bpf_stats** | cold, new last-two labels, bpf_stats | blocked NXDOMAIN, single runs |", HOT_REPEAT / 1000);
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in sizes {
        // A hosts file as users bring them: parse, compile and fill, timed
        // (the fill into the first variant only).
        let text: String = (0..n).map(|i| format!("0.0.0.0 host{i}.ads-{}.example{}\n", i % 977, i % 13)).collect();
        let started = Instant::now();
        let mut rules = RuleSet::default();
        lists::parse_str(&text, std::path::Path::new("bench-hosts.txt"), ListKind::Block, &mut rules);
        let table = lists::table::compile(&rules, 0x5eed, 1).expect("table");
        let report = variants[0].guard.install_table(&table).expect("install");
        let load_ms = started.elapsed().as_secs_f64() * 1e3;
        for v in variants.iter_mut().skip(1) {
            v.guard.install_table(&table).expect("install");
        }
        drop(text);

        let clean = packet("www.clean-site.example.org");
        let clean_deep = packet("www.clean-site.ads-1.example1");
        let blocked = packet("host1.ads-1.example1");
        // The built-in program must give the right verdicts; a variant that
        // does not (an ablation that skips steps) is only flagged.
        for (i, v) in variants.iter().enumerate() {
            let ours = v.guard.program();
            let verdicts = (run_ns(ours, &clean, 1, &mut out).1, if n > 0 { run_ns(ours, &blocked, 1, &mut out).1 } else { 3 });
            if verdicts != (2, 3) {
                assert!(i > 0, "clean name must pass (2), blocked one be answered with XDP_TX (3): got {verdicts:?}");
                println!("{}: verdicts (clean, blocked) {verdicts:?}, not (2, 3): an ablation", v.label);
            }
        }
        let cold: Vec<Vec<u8>> =
            (0..rounds * singles).map(|i| packet(&format!("w{i}.site{}.example.org", i * 7919))).collect();
        let cold_new: Vec<Vec<u8>> =
            (0..rounds * singles).map(|i| packet(&format!("w{i}.s{0}.ex{0}.org", i * 7919))).collect();

        // For profilers (`perf record -a`): spin on one hot mode only.
        if let Some(secs) = std::env::var("DG_BENCH_SPIN_SECS").ok().and_then(|s| s.parse::<f64>().ok()) {
            let until = Instant::now() + std::time::Duration::from_secs_f64(secs);
            let spun = if std::env::var("DG_BENCH_SPIN_DEEP").is_ok() { &clean_deep } else { &clean };
            while Instant::now() < until {
                run_ns(variants[0].guard.program(), spun, HOT_REPEAT, &mut out);
            }
        }

        let mut modes: Vec<Modes> = variants.iter().map(|_| Modes::default()).collect();
        for round in 0..rounds {
            for k in 0..variants.len() {
                let vi = (k + round) % variants.len();
                let ours = variants[vi].guard.program();
                let m = &mut modes[vi];
                m.hot.push(run_ns(ours, &clean, HOT_REPEAT, &mut out).0, run_ns(floor, &clean, HOT_REPEAT, &mut out).0);
                m.hot_deep.push(
                    run_ns(ours, &clean_deep, HOT_REPEAT, &mut out).0,
                    run_ns(floor, &clean_deep, HOT_REPEAT, &mut out).0,
                );

                let (mut o, mut f) = (Vec::with_capacity(singles), Vec::with_capacity(singles));
                for _ in 0..singles {
                    o.push(run_ns(ours, &clean, 1, &mut out).0);
                    f.push(run_ns(floor, &clean, 1, &mut out).0);
                }
                m.single.push(median(o), median(f));

                // Cold: bpf_stats on only here, since it slows every run down.
                let stats = enable_stats(Stats::RunTime).expect("BPF_ENABLE_STATS (kernel >= 5.8)");
                let (mut o, mut f, mut os, mut fs) = (vec![], vec![], vec![], vec![]);
                let (mut o_t, mut f_t) = (stats_ns(ours), stats_ns(floor));
                for p in &cold[round * singles..(round + 1) * singles] {
                    o.push(run_ns(ours, p, 1, &mut out).0);
                    f.push(run_ns(floor, p, 1, &mut out).0);
                    let (o_now, f_now) = (stats_ns(ours), stats_ns(floor));
                    os.push(o_now - o_t);
                    fs.push(f_now - f_t);
                    (o_t, f_t) = (o_now, f_now);
                }
                m.cold_tr.push(median(o), median(f));
                m.cold_st.push(median(os), median(fs));
                let (mut os, mut fs) = (vec![], vec![]);
                let (mut o_t, mut f_t) = (stats_ns(ours), stats_ns(floor));
                for p in &cold_new[round * singles..(round + 1) * singles] {
                    run_ns(ours, p, 1, &mut out);
                    run_ns(floor, p, 1, &mut out);
                    let (o_now, f_now) = (stats_ns(ours), stats_ns(floor));
                    os.push(o_now - o_t);
                    fs.push(f_now - f_t);
                    (o_t, f_t) = (o_now, f_now);
                }
                drop(stats);
                m.cold_new.push(median(os), median(fs));

                if n > 0 {
                    let (mut o, mut f) = (Vec::with_capacity(singles), Vec::with_capacity(singles));
                    for _ in 0..singles {
                        o.push(run_ns(ours, &blocked, 1, &mut out).0);
                        f.push(run_ns(floor, &blocked, 1, &mut out).0);
                    }
                    m.blk.push(median(o), median(f));
                }
            }
        }
        let bpn = if n > 0 { format!("{:.2}", report.bytes_per_name()) } else { "-".into() };
        for (v, m) in variants.iter().zip(&modes) {
            let blocked_cell = if n > 0 { m.blk.cell() } else { "-".into() };
            println!(
                "| {n} | {} | {load_ms:.0} | {bpn} | {} | {} | {} | {} | {} | {} | {blocked_cell} |",
                v.label,
                m.hot.cell(),
                m.hot_deep.cell(),
                m.single.cell(),
                m.cold_tr.cell(),
                m.cold_st.cell(),
                m.cold_new.cell()
            );
            if let Some(path) = &runs.json {
                let verified = v.guard.program().info().ok().and_then(|i| i.verified_instruction_count());
                let row = serde_json::json!({
                    "names": n,
                    "variant": v.label,
                    "load_ms": load_ms,
                    "kernel_bytes": report.kernel_bytes,
                    "bytes_per_name": if n > 0 { Some(report.bytes_per_name()) } else { None },
                    "verified_instructions": verified,
                    "hot_repeat": HOT_REPEAT,
                    "hot": m.hot.json(),
                    "hot_under_listed_domain": m.hot_deep.json(),
                    "single": m.single.json(),
                    "cold_test_run": m.cold_tr.json(),
                    "cold_bpf_stats": m.cold_st.json(),
                    "cold_new_suffix_bpf_stats": m.cold_new.json(),
                    "blocked": if n > 0 { Some(m.blk.json()) } else { None },
                });
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("DG_BENCH_JSON: open");
                writeln!(f, "{row}").expect("DG_BENCH_JSON: write");
            }
        }
    }
}
