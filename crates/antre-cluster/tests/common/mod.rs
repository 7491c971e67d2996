//! What the in-process cluster tests share.

use std::collections::BTreeSet;
use std::sync::Mutex;

use rand::Rng;

/// A free port for a node's cluster listener, planned before the node
/// binds it. Below the kernel's range of ephemeral ports: a port the OS
/// hands out for port 0 is one of those, and in the moment between the
/// plan and the bind any outgoing connection on the machine (the nodes of
/// the tests running in parallel dial each other all the time) could be
/// given it as its local port. That failed a node's start in CI with
/// "Address already in use". Recorded, so no two nodes of this test
/// process are planned onto the same port.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let below = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .filter(|&start: &u16| start > 16384 + 1024)
        .unwrap_or(32768);
    loop {
        let port = rand::thread_rng().gen_range(16384..below);
        let free = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free && GIVEN.lock().expect("ports").insert(port) {
            return port;
        }
    }
}
