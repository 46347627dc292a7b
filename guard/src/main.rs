//! `dns-guard`: see `app` for what each subcommand does.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use dns_guard::app;

#[derive(Parser)]
#[command(name = "dns-guard", version, about = "XDP DNS query guard and validating forwarder for CoreDNS")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to the interface, enforce the lists, stream verdicts to stdout.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate the config and every list; print counts. Exit 64 if bad.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Detach the XDP program and remove its pins (stop `run` first).
    Detach {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    fixed_mmap_threshold();
    // Diagnostics on stderr; stdout carries only the verdict log.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DNS_GUARD_LOG").unwrap_or_else(|_| "info".into()),
        )
        .init();

    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => app::check(&config),
        Command::Detach { config } => app::detach(&config),
        Command::Run { config } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(app::run(&config)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("dns-guard: {}", failure.message);
            ExitCode::from(failure.code as u8)
        }
    }
}

/// A list's rule map and table are a few large buffers. glibc serves large
/// allocations with mmap, returned to the kernel the moment they are freed,
/// until a freed one raises its dynamic threshold (up to 32 MiB): after
/// that the next list lands in the heap, where only `malloc_trim` and a
/// lucky layout give it back. One CI run read 38 MiB after five reloads of
/// 300k names against 27 loaded. A fixed threshold (setting it turns the
/// dynamic one off, mallopt(3)) keeps every buffer of 256 KiB and up on mmap.
fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc tunable; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}
