//! Server settings.

use std::path::PathBuf;

/// Everything the server needs to start. Defaults are RabbitMQ's where the
/// same setting exists, so clients see familiar limits.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address for AMQP clients; port 0 picks a free port.
    pub amqp_listen: String,
    /// Directory for the message store and definitions.
    pub data_dir: PathBuf,
    /// Heartbeat interval proposed to clients, in seconds (0 disables).
    pub heartbeat: u16,
    /// Largest frame the server accepts and proposes, in bytes.
    pub frame_max: u32,
    /// Most channels a connection may open.
    pub channel_max: u16,
    /// Largest message body accepted, in bytes (RabbitMQ's default: 128 MiB).
    pub max_message_size: u64,
    /// Bytes of message bodies each queue keeps in memory; past this,
    /// persistent messages stay on disk until delivered.
    pub queue_memory_limit: u64,
    /// Publishers are blocked while the data directory's file system has
    /// less free space than this, in bytes (RabbitMQ's default: 50 MB).
    pub disk_free_limit: u64,
    /// How often free disk space is checked.
    pub disk_check_interval: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            amqp_listen: "127.0.0.1:5672".into(),
            data_dir: PathBuf::from("antre-data"),
            heartbeat: 60,
            frame_max: 131_072,
            channel_max: 2047,
            max_message_size: 128 * 1024 * 1024,
            queue_memory_limit: 64 * 1024 * 1024,
            disk_free_limit: 50_000_000,
            disk_check_interval: std::time::Duration::from_secs(1),
        }
    }
}
