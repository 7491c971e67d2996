//! Runs the rstream (RabbitMQ's Python stream client) scripts of
//! crates/antre/tests/rstream against a stream listener (see
//! [`super::python`] for where rstream comes from).

use std::net::SocketAddr;

/// Whether to go on: python3 with rstream is there, or (outside CI) the
/// test says it skips.
pub fn rstream_or_skip() -> bool {
    super::python::module_or_skip("rstream")
}

/// Runs tests/rstream/SCRIPT against the stream listener at `addr`; it
/// must print "ok".
pub async fn run_script(addr: SocketAddr, script: &str, stream: &str) {
    let path = format!("{}/tests/rstream/{script}", env!("CARGO_MANIFEST_DIR"));
    let args = vec![
        path,
        addr.ip().to_string(),
        addr.port().to_string(),
        stream.to_owned(),
    ];
    super::python::run_ok(&format!("rstream script {script}"), args, super::WAIT * 4).await;
}
