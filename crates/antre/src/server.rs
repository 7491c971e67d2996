//! The AMQP listener, start-up and graceful shutdown.
//!
//! Start-up binds the AMQP and HTTP listeners before recovering storage, so
//! an address in use fails fast. Shutdown stops both listeners, closes every
//! AMQP connection with 320 CONNECTION_FORCED, then flushes the stores.

use std::net::SocketAddr;
use std::sync::Arc;

use antre_broker::{Broker, StorageOptions, User};
use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::alarm::DiskAlarm;
use crate::config::Config;
use crate::connection::Connection;
use crate::http::{self, rates::Rates, HttpState};
use crate::registry::Registry;

/// A server that is accepting connections.
#[derive(Debug)]
pub struct RunningServer {
    /// The free-disk alarm (its limit can be changed at run time).
    pub disk_alarm: DiskAlarm,
    /// The address AMQP clients connect to (with the real port).
    pub amqp_addr: SocketAddr,
    /// The address of the management API, UI and metrics, if served.
    pub http_addr: Option<SocketAddr>,
    /// The broker state, for inspection by tests and the management API.
    pub broker: Arc<Broker>,
    /// The open connections.
    pub registry: Arc<Registry>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    http_task: Option<JoinHandle<()>>,
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
        if let Some(http) = self.http_task {
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
    let listener = TcpListener::bind(&config.amqp_listen)
        .await
        .with_context(|| format!("binding AMQP listener on {}", config.amqp_listen))?;
    let amqp_addr = listener.local_addr()?;
    let http_listener = match &config.http_listen {
        None => None,
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding HTTP listener on {addr}"))?,
        ),
    };
    // Recovery reads every durable queue from disk: keep it off the async
    // workers. Clients connecting meanwhile wait in the listen backlog.
    let data_dir = config.data_dir.clone();
    let storage = StorageOptions {
        queue_memory_limit: config.queue_memory_limit,
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
    let disk_alarm = DiskAlarm::start(
        config.data_dir.clone(),
        config.disk_free_limit,
        config.disk_check_interval,
        shutdown_rx.clone(),
    );
    let shared_config = Arc::new(config.clone());
    let mut http_addr = None;
    let mut http_task = None;
    if let Some(http_listener) = http_listener {
        let addr = http_listener.local_addr()?;
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
            disk_alarm: disk_alarm.clone(),
            config: Arc::clone(&shared_config),
            amqp_addr,
            http_addr: addr,
            started: std::time::Instant::now(),
        };
        http_task = Some(tokio::spawn(http::serve(
            http_listener,
            state,
            shutdown_rx.clone(),
        )));
        http_addr = Some(addr);
        tracing::info!("management UI and API on http://{addr}/");
    }
    let task = tokio::spawn(accept_loop(
        listener,
        Arc::clone(&broker),
        shared_config,
        Arc::clone(&registry),
        disk_alarm.clone(),
        shutdown_rx,
        lock,
    ));
    tracing::info!("listening on amqp://{amqp_addr}");
    Ok(RunningServer {
        amqp_addr,
        http_addr,
        broker,
        registry,
        shutdown,
        task,
        http_task,
        config,
        disk_alarm,
    })
}

async fn accept_loop(
    listener: TcpListener,
    broker: Arc<Broker>,
    config: Arc<Config>,
    registry: Arc<Registry>,
    disk_alarm: DiskAlarm,
    mut shutdown: watch::Receiver<bool>,
    lock: std::fs::File,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let conn = Connection::new(stream, peer, Arc::clone(&broker), Arc::clone(&config), Arc::clone(&registry), disk_alarm.subscribe());
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
    drop(listener);
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
