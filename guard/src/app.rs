//! Wires the components: config, lists, the XDP guard, the verdict log and
//! the list watcher. Each subcommand of `dns-guard` is one function here.

use std::{
    path::Path,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use anyhow::Context;
use tracing::{error, info, warn};

use crate::{
    config::{self, Config},
    dynblock::DynBlocks,
    ebpf::{
        self,
        abi::guard_action,
        events::{stream_events, RuleIndex, SharedRuleIndex},
        AttachMode, RateLimitSettings, XdpGuard, XdpSettings,
    },
    admin::{Admin, Component, Readiness, Shutdown, XdpStats, DRAIN_GRACE},
    k8s::{self, PodIndex, PodWatch},
    lists::{self, RuleSet},
    metrics::{ListLabels, Metrics, ResultLabels},
    proxy,
    verdict::VerdictLog,
    watch::{self, ListWatcher},
};

/// Every query in flight holds an upstream socket, and the validator's
/// sub-queries hold more: the common soft limit of 1024 open files is
/// below `proxy::MAX_INFLIGHT`, and past it every exchange fails with
/// EMFILE. The soft limit is raised (within the hard limit) to two
/// sockets per query in flight and room for the rest, as the Go runtime
/// raises CoreDNS's to its hard limit.
fn raise_open_file_limit() {
    let want = 2 * proxy::MAX_INFLIGHT as u64 + 1024;
    match rlimit::increase_nofile_limit(want) {
        Ok(got) if got < want => warn!("open file limit is {got}; a busy proxy may run out (wants {want}); raise the hard limit"),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot read or raise the open file limit"),
    }
}

/// Exit codes: 64 for bad configuration (EX_USAGE, as linkerd2-proxy).
pub const EXIT_BAD_CONFIG: i32 = 64;

/// An error with the exit code it deserves.
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure { code: 1, message: format!("{:#}", e.into()) }
    }
}

fn bad_config(message: String) -> Failure {
    Failure { code: EXIT_BAD_CONFIG, message }
}

fn load_config(path: &Path) -> Result<Config, Failure> {
    config::load(path).map_err(|errors| bad_config(format!("{} is not valid:\n{errors}", path.display())))
}

fn load_lists(cfg: &Config, warn_skipped: bool) -> Result<RuleSet, Failure> {
    let mut rules = lists::load(&cfg.blocklists, &cfg.allowlists).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        bad_config(format!("lists could not be read:\n{}", lines.join("\n")))
    })?;
    if warn_skipped {
        log_skipped(&mut rules);
    }
    Ok(rules)
}

/// Skipped lines logged per load; `dns-guard check` lists them all.
const SKIPPED_LOGGED: usize = 100;

/// Logs the lines a load skipped, and lets them go: a rule set lives as
/// long as its table, and a million-line file of the wrong format would
/// keep a million messages.
fn log_skipped(rules: &mut RuleSet) {
    let skipped = std::mem::take(&mut rules.diagnostics);
    for d in skipped.iter().take(SKIPPED_LOGGED) {
        warn!("skipped list line: {d}");
    }
    if skipped.len() > SKIPPED_LOGGED {
        warn!("and {} more skipped list lines; `dns-guard check` lists them all", skipped.len() - SKIPPED_LOGGED);
    }
}

/// The loader's view of the config.
pub fn xdp_settings(cfg: &Config) -> Option<XdpSettings> {
    let interface = cfg.interface.clone()?;
    let x = &cfg.xdp;
    Some(XdpSettings {
        interface,
        mode: match x.mode {
            config::XdpMode::Auto => AttachMode::Auto,
            config::XdpMode::Native => AttachMode::Native,
            config::XdpMode::Generic => AttachMode::Generic,
        },
        ports: x.ports.clone(),
        block_action: match x.action {
            config::XdpAction::Nxdomain => guard_action::GUARD_ACTION_NXDOMAIN,
            config::XdpAction::Refused => guard_action::GUARD_ACTION_REFUSED,
            config::XdpAction::Drop => guard_action::GUARD_ACTION_DROP,
            config::XdpAction::Log => guard_action::GUARD_ACTION_LOG,
        },
        ratelimit: RateLimitSettings {
            qps: x.ratelimit.qps,
            burst: x.ratelimit.burst,
            ipv4_prefix: x.ratelimit.ipv4_prefix,
            ipv6_prefix: x.ratelimit.ipv6_prefix,
            action: match x.ratelimit.action {
                config::RateLimitAction::Drop => guard_action::GUARD_ACTION_DROP,
                config::RateLimitAction::Refused => guard_action::GUARD_ACTION_REFUSED,
                config::RateLimitAction::Truncate => guard_action::GUARD_ACTION_TRUNCATE,
                config::RateLimitAction::Log => guard_action::GUARD_ACTION_LOG,
            },
            max_clients: x.ratelimit.max_clients,
        },
        pin_dir: x.pin_dir.clone(),
        allow_sample: cfg.log.allow_sample,
    })
}

/// `dns-guard check`: validates the config and every list, prints counts.
pub fn check(path: &Path) -> Result<(), Failure> {
    let cfg = load_config(path)?;
    let started = Instant::now();
    let rules = load_lists(&cfg, false)?;
    let table = lists::table::compile(&rules, rand::random(), 0)?;
    println!("config {}: ok", path.display());
    for s in &rules.stats {
        let kind = match s.kind {
            lists::ListKind::Block => "blocklist",
            lists::ListKind::Allow => "allowlist",
        };
        println!("{kind} {}: {} rules, {} lines skipped", s.path.display(), s.rules, s.skipped);
    }
    for d in &rules.diagnostics {
        println!("  skipped {d}");
    }
    println!(
        "table: {} names ({} block, {} allow), {} buckets, {:.1} bytes/name, built in {:.0} ms",
        table.header.nnames,
        rules.count_block(),
        rules.count_allow(),
        table.header.nbuckets,
        table.bytes_per_name(),
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

/// `dns-guard detach`: removes the program, its link and every pin.
pub fn detach(path: &Path) -> Result<(), Failure> {
    let cfg = load_config(path)?;
    let Some(interface) = cfg.interface.as_deref() else {
        return Err(bad_config(format!("{}: no `interface:` set, nothing is attached", path.display())));
    };
    let report = ebpf::detach(&cfg.xdp.pin_dir, interface).context("detaching")?;
    println!(
        "detached from {interface}: link {}, {} pins removed from {}",
        if report.link_removed { "removed" } else { "not found" },
        report.pins_removed,
        report.pin_root.display()
    );
    Ok(())
}

/// Builds and installs a table for `rules`, then points the event reader
/// at it. The new table is complete before the swap: no window.
fn install(
    guard: &mut XdpGuard,
    rules: RuleSet,
    parse_took: Duration,
    generation: u64,
    index: &SharedRuleIndex,
    dynblocks: &DynBlocks,
    metrics: &Metrics,
) -> Result<(), Failure> {
    let started = Instant::now();
    let counts = (rules.count_block(), rules.count_allow());
    let seed: u64 = rand::random();
    let table = lists::table::compile(&rules, seed, generation)?;
    // Dynamic blocks are keyed by the table's seed: key them under the new
    // one before the swap, and drop the old keys after it.
    dynblocks.add_seed(seed);
    let report = match guard.install_table(&table) {
        Ok(r) => r,
        Err(e) => {
            dynblocks.retire_seed(seed);
            return Err(anyhow::Error::from(e).context("installing the list table").into());
        }
    };
    {
        let mut current = index.write().unwrap_or_else(|p| p.into_inner());
        let previous = current.take().map(|old| (old.seed, old.rules));
        if let Some((old_seed, _)) = &previous {
            dynblocks.retire_seed(*old_seed);
        }
        *current = Some(RuleIndex { previous, ..RuleIndex::new(seed, Arc::new(rules)) });
    }
    record_lists(metrics, counts, parse_took + started.elapsed());
    metrics.xdp_table_bytes.set(report.kernel_bytes as i64);
    info!(
        generation,
        names = report.names,
        kernel_bytes = report.kernel_bytes,
        bytes_per_name = format!("{:.1}", report.bytes_per_name()),
        load_ms = format!("{:.0}", started.elapsed().as_secs_f64() * 1e3),
        "list table installed"
    );
    Ok(())
}

/// Makes `rules` the index the proxy (and the event reader) consult,
/// without a kernel table: the proxy-only mode.
fn publish(rules: RuleSet, parse_took: Duration, index: &SharedRuleIndex, metrics: &Metrics) {
    record_lists(metrics, (rules.count_block(), rules.count_allow()), parse_took);
    *index.write().unwrap_or_else(|p| p.into_inner()) = Some(RuleIndex::new(0, Arc::new(rules)));
}

// ---- admin: list metrics, readiness, drain (guard/src/admin.rs) ----------
/// Records what /metrics says about the active lists; `took` is parse,
/// build and install together.
fn record_lists(metrics: &Metrics, (block, allow): (usize, usize), took: Duration) {
    metrics.list_names.get_or_create(&ListLabels { kind: "block" }).set(block as i64);
    metrics.list_names.get_or_create(&ListLabels { kind: "allow" }).set(allow as i64);
    metrics.list_load_seconds.observe(took.as_secs_f64());
}

/// Hands the heap a list load freed back to the kernel. glibc keeps freed
/// memory for reuse, so without this a sidecar with 1M names went from 183 MiB
/// RSS loaded to 331 MiB after a few reloads. The event reader lets the old rule
/// set go within half a second of the swap (`stream_events`): trim after that,
/// and again once every proxy query that still holds it has ended (`late`:
/// `proxy.query_timeout_ms`, when the proxy runs).
fn trim_heap_soon(late: Option<Duration>) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async move {
        let early = Duration::from_secs(2);
        // SAFETY: malloc_trim takes no pointers; it only releases free pages.
        let trim = || tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) });
        tokio::time::sleep(early).await;
        let _ = trim().await;
        if let Some(late) = late.map(|l| l + Duration::from_secs(1)).filter(|l| *l > early) {
            tokio::time::sleep(late - early).await;
            let _ = trim().await;
        }
    });
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = late;
}

fn record_reload(metrics: &Metrics, ok: bool) {
    metrics.list_reloads.get_or_create(&ResultLabels { result: if ok { "ok" } else { "error" } }).inc();
}
// ---- end admin -------------------------------------------------------------

/// `dns-guard run`: attach, enforce, log verdicts, reload on change.
pub async fn run(path: &Path) -> Result<(), Failure> {
    let cfg = load_config(path)?;
    let mut signals = Signals::install();
    raise_open_file_limit();
    let list_paths: Vec<_> = cfg.blocklists.iter().chain(&cfg.allowlists).cloned().collect();
    // Before the first load: a list that changes while the process starts
    // (seconds, with a large list to attach) reloads once it is up.
    let lists_as_loaded = watch::snapshot(&list_paths);
    let parse_started = Instant::now();
    let rules = load_lists(&cfg, true)?;
    let parse_took = parse_started.elapsed();
    let index: SharedRuleIndex = Arc::new(RwLock::new(None));
    // The one registry of the process: every layer records into it.
    let metrics = Metrics::new();

    // ---- kubernetes: pod names in verdict lines (guard/src/k8s.rs) -------
    // Started before anything enforces, but nothing waits for it: until the
    // first list arrives (or while the API is down) lines carry no pod.
    let (log, _pod_watch) = match k8s::cluster_config(cfg.kubernetes.enrich).await? {
        Some(kube_config) => {
            let pods = PodIndex::default();
            let watch = PodWatch::start(kube_config, pods.clone(), metrics.clone()).await?;
            eprintln!("dns-guard watching pods: verdict lines name the client's pod");
            (VerdictLog::stdout(metrics.verdict_log_dropped.clone()).with_pods(pods), Some(watch))
        }
        None => (VerdictLog::stdout(metrics.verdict_log_dropped.clone()), None),
    };
    let log = Arc::new(log);
    // ---- end kubernetes --------------------------------------------------

    // ---- admin: /metrics, /healthz, /readyz on metrics.listen -----------
    // Declared before anything starts, so readiness cannot latch early.
    let admin = Admin::new(metrics.clone());
    unready_on_sigterm(admin.readiness.clone());
    let shutdown = Shutdown::default();
    if cfg.interface.is_some() {
        admin.readiness.require(Component::Xdp);
    }
    if cfg.proxy_enabled {
        admin.readiness.require(Component::Proxy);
    }
    let admin_addr = admin.serve(cfg.metrics.listen, shutdown.token.clone()).await?;
    eprintln!("dns-guard admin listening on {admin_addr}");
    // ---- end admin -------------------------------------------------------

    // ---- the random-subdomain defence (guard/src/dynblock.rs) ----------
    let dry_run = cfg.xdp.action == config::XdpAction::Log;
    let dynblocks = Arc::new(DynBlocks::new(cfg.proxy.random_subdomain.clone(), dry_run, log.clone(), metrics.clone()));
    // ---- end random-subdomain defence ------------------------------------

    let xdp = xdp_settings(&cfg);
    let mut guard = match &xdp {
        Some(settings) => {
            let mut guard = XdpGuard::start(settings)?;
            dynblocks.attach_kernel(&guard.pin_root).context("opening the dynamic block map")?;
            install(&mut guard, rules, parse_took, 1, &index, &dynblocks, &metrics)?;
            let events = guard.take_events().context("opening the event ring buffer")?;
            // Tracked, so the drain on SIGTERM waits for its last lines.
            shutdown.tracker.spawn(stream_events(events, index.clone(), log.clone(), shutdown.token.clone()));
            Some(guard)
        }
        None => {
            warn!("no `interface:` configured: the XDP fast path is off");
            publish(rules, parse_took, &index, &metrics);
            None
        }
    };

    // ---- admin: XDP counters and readiness ------------------------------
    if let Some(g) = &guard {
        admin.xdp.set(XdpStats::from_guard(g)?);
        admin.readiness.up(Component::Xdp);
    }
    // ---- end admin -------------------------------------------------------

    // ---- proxy: the validating forwarder (guard/src/proxy) -------------
    let _proxy = if cfg.proxy_enabled {
        let settings = proxy::ProxySettings::from_config(&cfg).map_err(|e| bad_config(e.to_string()))?;
        let handle =
            proxy::start(settings, index.clone(), dynblocks.clone(), log.clone(), metrics.clone(), shutdown.clone()).await?;
        eprintln!("dns-guard proxy listening on {}", handle.local_addr);
        Some(handle)
    } else {
        None
    };
    // ---- end proxy -------------------------------------------------------
    if _proxy.is_some() {
        admin.readiness.up(Component::Proxy); // admin block
    }

    let (_watcher, mut changes) = ListWatcher::new(&list_paths, lists_as_loaded).context("watching the list files")?;
    match (&guard, &xdp) {
        (Some(g), Some(s)) => eprintln!("dns-guard ready: XDP {} on {}", g.attach, s.interface),
        _ => eprintln!("dns-guard ready"),
    }
    let trim_late = cfg.proxy_enabled.then(|| Duration::from_millis(cfg.proxy.query_timeout_ms));
    trim_heap_soon(trim_late);

    // SIGTERM is the kubelet stopping the pod, CoreDNS beside us included:
    // it goes on answering (and forwarding to us) for its lameduck time.
    let lameduck_s = if cfg.proxy_enabled { cfg.proxy.lameduck_s } else { 0 };
    let lameduck = |stop: Stop| match stop {
        Stop::Term => Duration::from_secs(lameduck_s),
        Stop::Interrupt => Duration::ZERO,
    };
    let mut generation = 1;
    loop {
        tokio::select! {
            changed = changes.recv() => {
                if changed.is_none() {
                    warn!("list watcher stopped; lists will no longer reload");
                    let stop = signals.next().await;
                    return drain(&shutdown, &admin, &log, guard.is_some(), lameduck(stop), &mut signals).await;
                }
                generation += 1;
                // Parsing a large list takes about a second: keep it off the
                // runtime's workers, which serve the proxy and the admin server.
                let (block, allow) = (cfg.blocklists.clone(), cfg.allowlists.clone());
                let parse_started = Instant::now();
                let loaded = match tokio::task::spawn_blocking(move || lists::load(&block, &allow)).await {
                    Ok(loaded) => loaded,
                    Err(e) => {
                        record_reload(&metrics, false);
                        error!("list reload task failed, keeping the previous table: {e}");
                        continue;
                    }
                };
                // A bad reload keeps the old table: enforcement never lapses.
                match loaded {
                    Ok(mut rules) => {
                        let parse_took = parse_started.elapsed();
                        log_skipped(&mut rules);
                        let before = index.read().unwrap_or_else(|p| p.into_inner()).as_ref().map(|i| i.rules.stats.clone());
                        let emptied = lists::emptied(&before.unwrap_or_default(), &rules.stats);
                        if !emptied.is_empty() {
                            record_reload(&metrics, false);
                            for e in emptied {
                                error!("reload refused, keeping the previous table: {e}");
                            }
                            trim_heap_soon(trim_late);
                            continue;
                        }
                        let installed = match guard.as_mut() {
                            Some(g) => install(g, rules, parse_took, generation, &index, &dynblocks, &metrics),
                            None => {
                                publish(rules, parse_took, &index, &metrics);
                                Ok(())
                            }
                        };
                        record_reload(&metrics, installed.is_ok());
                        match installed {
                            Ok(()) => eprintln!("dns-guard lists reloaded (generation {generation})"),
                            Err(f) => error!("reload failed, keeping the previous table: {}", f.message),
                        }
                    }
                    Err(errors) => {
                        record_reload(&metrics, false);
                        for e in errors {
                            error!("reload failed, keeping the previous table: {e}");
                        }
                    }
                }
                // Whatever the outcome, a whole list was parsed and let go.
                trim_heap_soon(trim_late);
            }
            stop = signals.next() => return drain(&shutdown, &admin, &log, guard.is_some(), lameduck(stop), &mut signals).await,
        }
    }
}

/// SIGTERM: unready, go on answering for `lameduck`, stop accepting, let
/// in-flight queries finish, then write out the last verdicts.
async fn drain(
    shutdown: &Shutdown,
    admin: &Admin,
    log: &VerdictLog,
    xdp: bool,
    lameduck: Duration,
    signals: &mut Signals,
) -> Result<(), Failure> {
    if !lameduck.is_zero() {
        admin.readiness.start_draining();
        info!(
            lameduck_s = lameduck.as_secs(),
            "SIGTERM: unready, still answering for proxy.lameduck_s (another SIGTERM or Ctrl-C ends it sooner)"
        );
        tokio::select! {
            _ = tokio::time::sleep(lameduck) => {}
            _ = signals.next() => info!("lameduck cut short"),
        }
    }
    if xdp {
        info!("shutting down; the pinned XDP program keeps enforcing (dns-guard detach removes it)");
    } else {
        info!("shutting down");
    }
    let abandoned = shutdown.drain(&admin.readiness, DRAIN_GRACE).await;
    info!(abandoned, "drained");
    log.close();
    Ok(())
}

/// Which signal asked us to stop.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// SIGTERM: the kubelet (or systemd) stopping us.
    Term,
    /// SIGINT: someone at a terminal, who wants it over now.
    Interrupt,
}

/// SIGTERM and SIGINT, handled from the start of `run`: dns-guard is PID 1
/// in its container, and the kernel discards a signal sent to a namespace's
/// init that has no handler, so a handler installed once the main loop
/// first waits would lose a SIGTERM sent during start-up (or during the
/// first reload), and the pod would wait for SIGKILL. Signals that arrive
/// before `next` is awaited are kept for it.
struct Signals {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            interrupt: signal(SignalKind::interrupt()).expect("SIGINT handler"),
        }
    }

    /// The next stop signal (cancel-safe).
    async fn next(&mut self) -> Stop {
        tokio::select! {
            _ = self.term.recv() => Stop::Term,
            _ = self.interrupt.recv() => Stop::Interrupt,
        }
    }
}

/// Turns `/readyz` 503 the moment SIGTERM arrives, even while the main
/// loop is busy with a list reload (a second or more with a large
/// list) and has not yet seen it: the Service must stop sending
/// queries at once. Every listener is told of a signal.
fn unready_on_sigterm(readiness: Arc<Readiness>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::spawn(async move {
        if term.recv().await.is_some() {
            readiness.start_draining();
        }
    });
}
