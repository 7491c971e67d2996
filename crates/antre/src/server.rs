//! The AMQP listener, start-up and graceful shutdown.
//!
//! Start-up binds the AMQP and HTTP listeners (each on every address of its
//! list, see [`crate::listen`]) before recovering storage, so an address in
//! use fails fast. Shutdown stops both listeners, closes every
//! AMQP connection with 320 CONNECTION_FORCED, then flushes the stores.

use std::net::SocketAddr;
use std::sync::Arc;

use antre_broker::{Broker, StorageOptions, User};
use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::alarm::{self, Alarms, CheckIntervals};
use crate::config::Config;
use crate::connection::Connection;
use crate::http::{self, rates::Rates, HttpState};
use crate::listen;
use crate::registry::Registry;

/// A server that is accepting connections.
#[derive(Debug)]
pub struct RunningServer {
    /// The memory and free-disk alarms (their limits can be changed at run
    /// time).
    pub alarms: Alarms,
    /// The first address AMQP clients connect to (with the real port).
    pub amqp_addr: SocketAddr,
    /// Every address AMQP clients may connect to.
    pub amqp_addrs: Vec<SocketAddr>,
    /// The first address of the management API, UI and metrics, if served.
    pub http_addr: Option<SocketAddr>,
    /// Every address of the management API, UI and metrics.
    pub http_addrs: Vec<SocketAddr>,
    /// The broker state, for inspection by tests and the management API.
    pub broker: Arc<Broker>,
    /// The open connections.
    pub registry: Arc<Registry>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    http_tasks: Vec<JoinHandle<()>>,
    config: Config,
}

impl RunningServer {
    /// The settings it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Stops accepting, closes every connection with 320 CONNECTION_FORCED
    /// and waits for the connection tasks to finish.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for http in self.http_tasks {
            let _ = http.await;
        }
        let _ = self.task.await;
    }
}

/// Binds the listener and starts serving in the background.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let lock = lock_data_dir(&config.data_dir)?;
    let listeners = listen::bind_all(&config.amqp_listen, listen::AMQP).await?;
    let amqp_addrs = local_addrs(&listeners)?;
    let amqp_addr = amqp_addrs[0];
    let http_listeners = match &config.http_listen {
        None => Vec::new(),
        Some(list) => listen::bind_all(list, listen::HTTP).await?,
    };
    let http_addrs = local_addrs(&http_listeners)?;
    // Recovery reads every durable queue from disk: keep it off the async
    // workers. Clients connecting meanwhile wait in the listen backlog.
    let data_dir = config.data_dir.clone();
    let memory_limit = config.memory_high_watermark.bytes(alarm::memory_total());
    let storage = StorageOptions {
        // Paging must start well below the watermark, or the alarm would
        // block publishers before queues page anything.
        message_memory_limit: config.message_memory_limit.min(memory_limit / 4),
        ..StorageOptions::default()
    };
    let started = std::time::Instant::now();
    let broker = tokio::task::spawn_blocking(move || Broker::open(&data_dir, storage))
        .await
        .context("recovery task failed")?
        .with_context(|| format!("opening data directory {}", config.data_dir.display()))?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        data_dir = %config.data_dir.display(),
        "storage recovered"
    );
    if let Some((name, password)) = &config.default_user {
        broker.add_user(User {
            name: name.clone(),
            password: password.clone(),
            loopback_only: false,
        });
        if name != "guest" {
            broker.delete_user("guest");
        }
    }
    let broker = Arc::new(broker);
    let registry = Arc::<Registry>::default();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let alarms = Alarms::start(
        &broker,
        memory_limit,
        config.data_dir.clone(),
        config.disk_free_limit,
        CheckIntervals {
            memory: config.memory_check_interval,
            disk: config.disk_check_interval,
        },
        shutdown_rx.clone(),
    );
    tracing::info!(
        memory_high_watermark = memory_limit,
        disk_free_limit = config.disk_free_limit,
        "resource alarms set"
    );
    let shared_config = Arc::new(config.clone());
    let mut http_tasks = Vec::new();
    if !http_listeners.is_empty() {
        let rates = Rates::start(
            Arc::clone(&broker),
            Arc::clone(&registry),
            config.rate_interval,
            shutdown_rx.clone(),
        );
        let state = HttpState {
            broker: Arc::clone(&broker),
            registry: Arc::clone(&registry),
            rates,
            alarms: alarms.clone(),
            config: Arc::clone(&shared_config),
            amqp_addrs: amqp_addrs.clone(),
            http_addrs: http_addrs.clone(),
            started: std::time::Instant::now(),
        };
        for (listener, addr) in http_listeners.into_iter().zip(&http_addrs) {
            http_tasks.push(tokio::spawn(http::serve(
                listener,
                state.clone(),
                shutdown_rx.clone(),
            )));
            tracing::info!("management UI and API on http://{addr}/");
        }
    }
    let task = tokio::spawn(accept_loop(
        listeners,
        Arc::clone(&broker),
        shared_config,
        Arc::clone(&registry),
        alarms.clone(),
        shutdown_rx,
        lock,
    ));
    for addr in &amqp_addrs {
        tracing::info!("listening on amqp://{addr}");
    }
    Ok(RunningServer {
        amqp_addr,
        amqp_addrs,
        http_addr: http_addrs.first().copied(),
        http_addrs,
        broker,
        registry,
        shutdown,
        task,
        http_tasks,
        config,
        alarms,
    })
}

fn local_addrs(listeners: &[TcpListener]) -> anyhow::Result<Vec<SocketAddr>> {
    Ok(listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<std::io::Result<_>>()?)
}

async fn accept_loop(
    listeners: Vec<TcpListener>,
    broker: Arc<Broker>,
    config: Arc<Config>,
    registry: Arc<Registry>,
    alarms: Alarms,
    mut shutdown: watch::Receiver<bool>,
    lock: std::fs::File,
) {
    let mut connections = JoinSet::new();
    let mut next = 0;
    loop {
        tokio::select! {
            accepted = listen::accept_any(&listeners, &mut next) => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let conn = Connection::new(stream, peer, Arc::clone(&broker), Arc::clone(&config), Arc::clone(&registry), alarms.subscribe());
                    connections.spawn(conn.serve(shutdown.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: keep serving the
                    // connections we have rather than dying.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listeners);
    while connections.join_next().await.is_some() {}
    // Every connection is gone: flush and close the stores so a restart
    // brings back no acked message.
    let _ = tokio::task::spawn_blocking(move || broker.close()).await;
    drop(lock);
}

/// Takes an exclusive lock on the data directory, so a second broker
/// started on the same directory refuses to run instead of corrupting it.
fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.try_lock().map_err(|e| {
        anyhow::anyhow!(
            "data directory {} is in use by another antre process ({e})",
            dir.display()
        )
    })?;
    Ok(file)
}
