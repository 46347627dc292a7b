//! The floor of any forwarder: a bare UDP relay with no DNS in it.
//!
//! `integration/bench_proxy.py --relay` runs it beside the proxy, in the
//! proxy's place, to split the proxy's added latency into what one more
//! network hop costs on the machine (this relay) and what the proxy itself
//! adds on top (parsing, checks, tokio). One thread, blocking sockets, one
//! query at a time: a latency floor, not a throughput one.
//!
//!     udp_relay LISTEN UPSTREAM fresh|shared
//!
//! `fresh` opens a new upstream socket per query, as the proxy does for a
//! random source port (RFC 5452 §9.2); `shared` reuses one connected socket.

use std::{
    env,
    io,
    net::{SocketAddr, UdpSocket},
    process::ExitCode,
    time::Duration,
};

fn upstream_socket(upstream: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = if upstream.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let sock = UdpSocket::bind(any)?;
    sock.connect(upstream)?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    Ok(sock)
}

fn relay(listen: SocketAddr, upstream: SocketAddr, fresh: bool) -> io::Result<()> {
    let server = UdpSocket::bind(listen)?;
    let shared = upstream_socket(upstream)?;
    eprintln!("udp_relay listening on {listen}, upstream {upstream}, {} socket", if fresh { "fresh" } else { "shared" });
    let (mut query, mut answer) = ([0u8; 4096], [0u8; 4096]);
    loop {
        let (n, client) = server.recv_from(&mut query)?;
        let own;
        let up = if fresh {
            own = upstream_socket(upstream)?;
            &own
        } else {
            &shared
        };
        up.send(&query[..n])?;
        match up.recv(&mut answer) {
            Ok(m) => {
                server.send_to(&answer[..m], client)?;
            }
            // a lost answer is the client's timeout, as with any forwarder
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [listen, upstream, mode] if mode == "fresh" || mode == "shared" => {
            listen.parse::<SocketAddr>().ok().zip(upstream.parse::<SocketAddr>().ok()).map(|(l, u)| (l, u, mode == "fresh"))
        }
        _ => None,
    };
    let Some((listen, upstream, fresh)) = parsed else {
        eprintln!("usage: udp_relay LISTEN_ADDR:PORT UPSTREAM_ADDR:PORT fresh|shared");
        return ExitCode::from(64);
    };
    match relay(listen, upstream, fresh) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udp_relay: {e}");
            ExitCode::FAILURE
        }
    }
}
