//! Binding the listeners: a setting such as `amqp_listen` is a
//! comma-separated list of addresses (`127.0.0.1:5672,[::1]:5672`), each
//! bound separately, so the default can serve both loopback addresses — a
//! Node.js client connecting to `localhost` tries `::1` first — and
//! `0.0.0.0:5672` or `[::]:5672` serve every interface, as RabbitMQ does.
//!
//! A host name is resolved and every address it names is bound. Port 0
//! picks a free port once: the other addresses of the list get the same
//! one. An address this machine cannot have (IPv6 turned off, say) is
//! skipped with a warning as long as another address was bound; any other
//! failure, such as a port in use, stops the start with a message that
//! says which setting picks another address.

use std::io;
use std::net::SocketAddr;
use std::task::Poll;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};

/// Which listener a list of addresses is for, to name its setting in
/// errors.
#[derive(Debug, Clone, Copy)]
pub struct ListenerKind {
    /// "AMQP", "AMQPS", "HTTP" or "HTTPS".
    pub protocol: &'static str,
    /// The command-line flag that sets it.
    pub flag: &'static str,
    /// The environment variable that sets it.
    pub env: &'static str,
    /// What RabbitMQ's default for it is, for the port-in-use hint.
    pub rabbitmq_port: u16,
}

/// The AMQP listener's setting.
pub const AMQP: ListenerKind = ListenerKind {
    protocol: "AMQP",
    flag: "--amqp-listen",
    env: "ANTRE_AMQP_LISTEN",
    rabbitmq_port: 5672,
};

/// The AMQP-over-TLS listener's setting.
pub const AMQPS: ListenerKind = ListenerKind {
    protocol: "AMQPS",
    flag: "--amqps-listen",
    env: "ANTRE_AMQPS_LISTEN",
    rabbitmq_port: 5671,
};

/// The HTTP listener's setting.
pub const HTTP: ListenerKind = ListenerKind {
    protocol: "HTTP",
    flag: "--http-listen",
    env: "ANTRE_HTTP_LISTEN",
    rabbitmq_port: 15672,
};

/// The HTTPS listener's setting.
pub const HTTPS: ListenerKind = ListenerKind {
    protocol: "HTTPS",
    flag: "--https-listen",
    env: "ANTRE_HTTPS_LISTEN",
    rabbitmq_port: 15671,
};

/// The entries of a comma-separated address list.
pub fn entries(list: &str) -> Vec<&str> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Binds every address of `list`.
pub async fn bind_all(list: &str, kind: ListenerKind) -> anyhow::Result<Vec<TcpListener>> {
    let mut addrs = Vec::new();
    for entry in entries(list) {
        let resolved = tokio::net::lookup_host(entry).await.with_context(|| {
            format!(
                "{} listen address '{entry}' is not HOST:PORT (set it with {} or {})",
                kind.protocol, kind.flag, kind.env
            )
        })?;
        for addr in resolved {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
    }
    if addrs.is_empty() {
        anyhow::bail!(
            "no {} listen address in '{list}' (set one with {} or {})",
            kind.protocol,
            kind.flag,
            kind.env
        );
    }
    let mut listeners: Vec<TcpListener> = Vec::new();
    let mut skipped = Vec::new();
    for mut addr in addrs {
        if addr.port() == 0 {
            if let Some(first) = listeners.first() {
                addr.set_port(first.local_addr()?.port());
            }
        }
        match TcpListener::bind(addr).await {
            Ok(l) => listeners.push(l),
            Err(e) if unavailable(&e) => skipped.push((addr, e)),
            Err(e) => return Err(bind_error(list, addr, e, kind)),
        }
    }
    for (addr, e) in &skipped {
        if listeners.is_empty() {
            break;
        }
        tracing::warn!(%addr, "not listening for {} on {addr}: {e}", kind.protocol);
    }
    if listeners.is_empty() {
        let (addr, e) = skipped.remove(0);
        return Err(bind_error(list, addr, e, kind));
    }
    Ok(listeners)
}

/// The address cannot exist here (no IPv6, no such interface).
fn unavailable(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AddrNotAvailable || e.raw_os_error() == Some(97) // EAFNOSUPPORT on Linux
}

fn bind_error(list: &str, addr: SocketAddr, e: io::Error, kind: ListenerKind) -> anyhow::Error {
    if e.kind() == io::ErrorKind::AddrInUse {
        // The same list one port up.
        let port = addr.port().checked_add(1).unwrap_or(1);
        let other = entries(list)
            .iter()
            .map(|entry| match entry.rsplit_once(':') {
                Some((host, _)) => format!("{host}:{port}"),
                None => (*entry).to_owned(),
            })
            .collect::<Vec<_>>()
            .join(",");
        let who = if addr.port() == kind.rabbitmq_port {
            " (RabbitMQ's default port: is RabbitMQ or another antre running?)"
        } else {
            ""
        };
        return anyhow::anyhow!(
            "cannot listen for {} on {addr}: the port is in use{who}. Pick another \
             address with {} {other} (or {}={other}, or the config file)",
            kind.protocol,
            kind.flag,
            kind.env
        );
    }
    anyhow::anyhow!(
        "cannot listen for {} on {addr}: {e} (set the address with {} or {})",
        kind.protocol,
        kind.flag,
        kind.env
    )
}

/// Accepts the next connection on any of `listeners`, taking them in turn
/// from `*next` so a busy one does not starve the others; says which
/// listener it came from.
pub async fn accept_any(
    listeners: &[TcpListener],
    next: &mut usize,
) -> io::Result<(TcpStream, SocketAddr, usize)> {
    std::future::poll_fn(|cx| {
        let n = listeners.len();
        for i in 0..n {
            let at = (*next + i) % n;
            if let Poll::Ready(result) = listeners[at].poll_accept(cx) {
                *next = (at + 1) % n;
                return Poll::Ready(result.map(|(stream, peer)| (stream, peer, at)));
            }
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn port_zero_is_picked_once_for_the_whole_list() {
        let listeners = bind_all("127.0.0.1:0, 127.0.0.2:0", AMQP).await;
        let Ok(listeners) = listeners else {
            return; // 127.0.0.2 is not routed to loopback everywhere
        };
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0], ports[1]);
    }

    #[tokio::test]
    async fn a_port_in_use_says_how_to_pick_another() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind_all(&addr.to_string(), AMQP).await.unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("in use"), "{text}");
        assert!(text.contains("--amqp-listen"), "{text}");
        assert!(text.contains("ANTRE_AMQP_LISTEN"), "{text}");
    }

    #[tokio::test]
    async fn nonsense_and_empty_lists_are_errors() {
        assert!(bind_all("not an address", HTTP).await.is_err());
        assert!(bind_all(" , ", HTTP).await.is_err());
    }
}
