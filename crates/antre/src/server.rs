//! The AMQP listeners, start-up and graceful shutdown.
//!
//! Start-up loads the TLS certificates, if any, and binds the amqp, amqps,
//! http and https listeners (each on every address of its list, see
//! [`crate::listen`]) before recovering storage, so a bad certificate or
//! an address in use fails fast. One accept loop serves amqp and amqps:
//! an amqps connection's task runs the TLS handshake, then the same
//! [`Connection`] code as plain TCP. Shutdown stops every listener, closes
//! every AMQP connection with 320 CONNECTION_FORCED, then flushes the
//! stores.

use std::net::SocketAddr;
use std::sync::Arc;

use antre_broker::{Broker, StorageOptions, User};
use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::alarm::{self, Alarms, CheckIntervals};
use crate::config::Config;
use crate::connection::{Accepted, Buffers, Connection, READ_BUFFERS_LIMIT, WRITE_BUFFERS_LIMIT};
use crate::http::{self, rates::Rates, HttpState};
use crate::listen;
use crate::registry::Registry;
use crate::sockets::{SocketKind, SocketSlot, Sockets};
use crate::tls::{TlsCertificates, TlsError, TlsInfo, TlsProtocol};

/// A server that is accepting connections.
#[derive(Debug)]
pub struct RunningServer {
    /// The memory and free-disk alarms (their limits can be changed at run
    /// time).
    pub alarms: Alarms,
    /// The first address AMQP clients connect to (with the real port), if
    /// plain AMQP is served.
    pub amqp_addr: Option<SocketAddr>,
    /// Every address AMQP clients may connect to.
    pub amqp_addrs: Vec<SocketAddr>,
    /// The first amqps address, if AMQP over TLS is served.
    pub amqps_addr: Option<SocketAddr>,
    /// Every amqps address.
    pub amqps_addrs: Vec<SocketAddr>,
    /// The first address of the management API, UI and metrics, if served.
    pub http_addr: Option<SocketAddr>,
    /// Every address of the management API, UI and metrics.
    pub http_addrs: Vec<SocketAddr>,
    /// The first address of the same over HTTPS, if served.
    pub https_addr: Option<SocketAddr>,
    /// Every HTTPS address.
    pub https_addrs: Vec<SocketAddr>,
    /// The first address of RabbitMQ's stream protocol, if served.
    pub stream_addr: Option<SocketAddr>,
    /// Every stream protocol address.
    pub stream_addrs: Vec<SocketAddr>,
    /// The TLS certificates in use, if any.
    pub tls: Option<Arc<TlsCertificates>>,
    /// The broker state, for inspection by tests and the management API.
    pub broker: Arc<Broker>,
    /// The open connections.
    pub registry: Arc<Registry>,
    /// The client-socket budget.
    pub sockets: Arc<Sockets>,
    shutdown: watch::Sender<bool>,
    /// The accept loop; it hands back the data directory's lock once every
    /// connection is gone.
    task: JoinHandle<std::fs::File>,
    http_tasks: Vec<JoinHandle<()>>,
    stream_tasks: Vec<JoinHandle<()>>,
    config: Config,
    /// This node's cluster membership, if it is a cluster node.
    pub cluster: Option<Arc<antre_cluster::Cluster>>,
}

impl RunningServer {
    /// The settings it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Reads the TLS certificate, key and CA files again (what SIGHUP
    /// does), the listeners' and the cluster link's: connections made from
    /// now on use them, open ones keep theirs. On failure the certificates
    /// in use stay. Without TLS there is nothing to do.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        let link = self.config.cluster.as_ref().and_then(|c| c.tls.as_ref());
        if let (Some(files), Some(link)) = (&self.config.cluster_tls_files, link) {
            link.replace(&crate::tls::cluster_link(
                &files.cert,
                &files.key,
                &files.ca,
            )?);
            tracing::info!("cluster link TLS files reloaded: new connections use them");
        }
        match &self.tls {
            Some(certs) => certs.reload(),
            None => Ok(()),
        }
    }

    /// Stops accepting, closes every connection with 320 CONNECTION_FORCED
    /// and waits for the connection tasks to finish.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for http in self.http_tasks {
            let _ = http.await;
        }
        for stream in self.stream_tasks {
            let _ = stream.await;
        }
        let lock = self.task.await;
        // The cluster stops before the stores close: its state machine
        // applies metadata changes to the broker until it stops, and one
        // applied to closed stores was recorded as applied (not applied
        // again after the restart) without being written: a graceful stop
        // of a node lost a queue declared meanwhile for good.
        if let Some(cluster) = &self.cluster {
            cluster.shutdown().await;
        }
        // Every connection is gone: flush and close the stores so a
        // restart brings back no acked message.
        let broker = Arc::clone(&self.broker);
        let _ = tokio::task::spawn_blocking(move || broker.close()).await;
        drop(lock);
    }
}

/// Makes `name` an administrator with `password` and, unless it has some,
/// every permission on `/` (RabbitMQ's `default_user` and
/// `default_permissions`); removes `guest`.
fn seed_default_user(broker: &Broker, name: &str, password: &str) -> anyhow::Result<()> {
    let access = broker.access();
    let tags = match access.user(name) {
        Some(u) if u.has_tag("administrator") => u.tags,
        Some(u) => [u.tags, vec!["administrator".to_owned()]].concat(),
        None => vec!["administrator".to_owned()],
    };
    broker.add_user(User {
        name: name.to_owned(),
        password: password.to_owned(),
        tags,
    })?;
    if access.permission(name, "/").is_none() {
        broker.set_permission(antre_broker::access::full_permission(name, "/"))?;
    }
    if name != "guest" {
        broker.delete_user("guest")?;
    }
    Ok(())
}

/// In a cluster, a user or vhost deleted on any node closes the
/// connections it had on this node, as the deleting node closes its own
/// (RabbitMQ closes them cluster-wide).
fn close_on_deletion(cluster: &antre_cluster::Cluster, registry: &Arc<Registry>) {
    use antre_broker::cluster::MetaCommand;
    let registry = Arc::downgrade(registry);
    cluster.on_applied(move |command| {
        let Some(registry) = registry.upgrade() else {
            return;
        };
        let (user, vhost) = match command {
            MetaCommand::DeleteUser { name } => (Some(name), None),
            MetaCommand::DeleteVhost { name } => (None, Some(name)),
            _ => return,
        };
        for c in registry.connections() {
            if user == Some(&c.user) {
                c.force_close(&format!("user '{}' is deleted", c.user));
            } else if vhost == Some(&c.vhost) {
                c.force_close(&format!("vhost '{}' is deleted", c.vhost));
            }
        }
    });
}

/// Binds the listener and starts serving in the background.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let lock = lock_data_dir(&config.data_dir)?;
    // Before the store opens its files: the budget keeps descriptors for
    // them whatever clients do.
    let sockets = Sockets::for_node(config.max_sockets, config.http_max_connections);
    let tls = match &config.tls {
        Some(settings) => Some(Arc::new(TlsCertificates::load(settings.clone())?)),
        None if config.amqps_listen.is_some() || config.https_listen.is_some() => {
            anyhow::bail!("amqps_listen and https_listen need TLS settings (--tls-cert, --tls-key)")
        }
        None => None,
    };
    let plain = bind(config.amqp_listen.as_deref(), listen::AMQP).await?;
    let amqp_addrs = local_addrs(&plain)?;
    let secure = bind(config.amqps_listen.as_deref(), listen::AMQPS).await?;
    let amqps_addrs = local_addrs(&secure)?;
    let http_listeners = bind(config.http_listen.as_deref(), listen::HTTP).await?;
    let http_addrs = local_addrs(&http_listeners)?;
    let https_listeners = bind(config.https_listen.as_deref(), listen::HTTPS).await?;
    let https_addrs = local_addrs(&https_listeners)?;
    let stream_listeners = bind(config.stream_listen.as_deref(), crate::stream::LISTENER).await?;
    let stream_addrs = local_addrs(&stream_listeners)?;
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
    // Like the message budget, unwritten output must stay well below the
    // watermark (0, unlimited, stays so).
    let output_total = match config.delivery_buffer_total {
        0 => 0,
        total => total.min(memory_limit / 4).max(1),
    };
    broker.output_budget.set_limit(output_total);
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        data_dir = %config.data_dir.display(),
        "storage recovered"
    );
    broker
        .access()
        .set_loopback_users(config.loopback_users.clone());
    if let Some((name, password)) = &config.default_user {
        seed_default_user(&broker, name, password)?;
    }
    let broker = Arc::new(broker);
    // Before any listener serves: from here on, metadata changes go
    // through the cluster's metadata group.
    let cluster = match &config.cluster {
        Some(c) => Some(
            antre_cluster::Cluster::start(c.clone(), Arc::clone(&broker))
                .await
                .context("starting the cluster node")?,
        ),
        None => None,
    };
    let registry = Arc::<Registry>::default();
    if let Some(cluster) = &cluster {
        close_on_deletion(cluster, &registry);
    }
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
    let link = cluster.as_ref().map(|c| Arc::clone(&c.link));
    let maintenance = Arc::new(crate::maintenance::Maintenance::new(link));
    let mut http_tasks = Vec::new();
    if !http_listeners.is_empty() || !https_listeners.is_empty() {
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
            amqps_addrs: amqps_addrs.clone(),
            http_addrs: http_addrs.clone(),
            https_addrs: https_addrs.clone(),
            stream_addrs: stream_addrs.clone(),
            started: std::time::Instant::now(),
            sockets: Arc::clone(&sockets),
            cluster: cluster.clone(),
            maintenance: Arc::clone(&maintenance),
        };
        http::api::peers::serve(&state);
        let http = http_listeners
            .into_iter()
            .zip(&http_addrs)
            .map(|l| (l, None));
        let https = https_listeners
            .into_iter()
            .zip(&https_addrs)
            .map(|l| (l, tls.clone()));
        for ((listener, addr), tls) in http.chain(https) {
            let scheme = if tls.is_some() { "https" } else { "http" };
            http_tasks.push(tokio::spawn(http::serve(
                listener,
                tls,
                state.clone(),
                shutdown_rx.clone(),
            )));
            tracing::info!("management UI and API on {scheme}://{addr}/");
        }
    }
    crate::maintenance::record(&maintenance, &broker, shutdown_rx.clone());
    if let Some(c) = &config.cluster {
        // The first stream listener is the one clients are sent to.
        crate::stream::record_listener(&broker, stream_addrs.first().copied(), c.advertised().ip());
    }
    let mut stream_tasks = Vec::new();
    // Single-active-consumer groups span every stream listener.
    let stream_groups = Arc::new(crate::stream::Groups::default());
    for (listener, addr) in stream_listeners.into_iter().zip(&stream_addrs) {
        stream_tasks.push(tokio::spawn(crate::stream::serve(
            listener,
            Arc::clone(&broker),
            Arc::clone(&stream_groups),
            Arc::clone(&maintenance),
            shutdown_rx.clone(),
        )));
        tracing::info!("listening on rabbitmq-stream://{addr}");
    }
    let cluster_tls = config.cluster.as_ref().and_then(|c| c.tls.clone());
    if let (Some(files), Some(link)) = (&config.cluster_tls_files, cluster_tls) {
        if !config.tls_reload_interval.is_zero() {
            tokio::spawn(crate::tls::watch_cluster_link(
                files.clone(),
                link,
                config.tls_reload_interval,
                shutdown_rx.clone(),
            ));
        }
    }
    if let Some(certs) = &tls {
        if !config.tls_reload_interval.is_zero() {
            tokio::spawn(Arc::clone(certs).watch(config.tls_reload_interval, shutdown_rx.clone()));
        }
    }
    let amqp_listeners = AmqpListeners {
        secure_from: plain.len(),
        listeners: plain.into_iter().chain(secure).collect(),
        tls: tls.clone(),
    };
    let shared = Shared {
        broker: Arc::clone(&broker),
        config: shared_config,
        registry: Arc::clone(&registry),
        alarms: alarms.clone(),
        sockets: Arc::clone(&sockets),
        buffers: Buffers::new(READ_BUFFERS_LIMIT, WRITE_BUFFERS_LIMIT),
        maintenance,
    };
    let task = tokio::spawn(accept_loop(amqp_listeners, shared, shutdown_rx, lock));
    for addr in &amqp_addrs {
        tracing::info!("listening on amqp://{addr}");
    }
    for addr in &amqps_addrs {
        tracing::info!("listening on amqps://{addr}");
    }
    Ok(RunningServer {
        amqp_addr: amqp_addrs.first().copied(),
        amqp_addrs,
        amqps_addr: amqps_addrs.first().copied(),
        amqps_addrs,
        http_addr: http_addrs.first().copied(),
        http_addrs,
        https_addr: https_addrs.first().copied(),
        https_addrs,
        stream_addr: stream_addrs.first().copied(),
        stream_addrs,
        tls,
        broker,
        registry,
        sockets,
        shutdown,
        task,
        http_tasks,
        stream_tasks,
        config,
        alarms,
        cluster,
    })
}

/// Binds a listener's addresses, or none if it is off.
async fn bind(list: Option<&str>, kind: listen::ListenerKind) -> anyhow::Result<Vec<TcpListener>> {
    match list {
        Some(list) => listen::bind_all(list, kind).await,
        None => Ok(Vec::new()),
    }
}

fn local_addrs(listeners: &[TcpListener]) -> anyhow::Result<Vec<SocketAddr>> {
    Ok(listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<std::io::Result<_>>()?)
}

/// The amqp and amqps listeners, accepted from by one loop.
struct AmqpListeners {
    /// amqp's first, then amqps's.
    listeners: Vec<TcpListener>,
    /// Where amqps's begin.
    secure_from: usize,
    tls: Option<Arc<TlsCertificates>>,
}

/// What every connection task shares.
#[derive(Clone)]
struct Shared {
    broker: Arc<Broker>,
    config: Arc<Config>,
    registry: Arc<Registry>,
    alarms: Alarms,
    sockets: Arc<Sockets>,
    /// The node-wide budgets of connections' read and output buffers.
    buffers: Buffers,
    /// A drained node takes no new client.
    maintenance: Arc<crate::maintenance::Maintenance>,
}

impl Shared {
    async fn serve_plain(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        slot: SocketSlot,
        shutdown: watch::Receiver<bool>,
    ) {
        let local = stream.local_addr().unwrap_or(peer);
        let accepted = Accepted {
            stream,
            peer,
            local,
            tls: None,
            external: false,
            slot,
        };
        self.connection(accepted).serve(shutdown).await;
    }

    /// Runs the TLS handshake (given up at shutdown, or when the socket
    /// budget closes the socket to make room), then serves the connection
    /// as a plain one.
    async fn serve_tls(
        self,
        certs: Arc<TlsCertificates>,
        stream: TcpStream,
        peer: SocketAddr,
        slot: SocketSlot,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let local = stream.local_addr().unwrap_or(peer);
        let stream = tokio::select! {
            handshake = certs.handshake(stream, TlsProtocol::Amqp) => match handshake {
                Ok(stream) => stream,
                Err(e) => {
                    // A client that does not trust us, or that we do not
                    // trust, is the client's business: debug, not warn.
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
            },
            _ = slot.evicted() => return,
            _ = shutdown.changed() => return,
        };
        let accepted = Accepted {
            tls: Some(TlsInfo::of(stream.get_ref().1)),
            external: certs.verifies_clients(),
            stream,
            peer,
            local,
            slot,
        };
        self.connection(accepted).serve(shutdown).await;
    }

    fn connection<S>(&self, accepted: Accepted<S>) -> Connection<S>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        Connection::new(
            accepted,
            Arc::clone(&self.broker),
            Arc::clone(&self.config),
            Arc::clone(&self.registry),
            self.alarms.subscribe(),
            &self.buffers,
        )
    }
}

/// Accepts AMQP and AMQPS clients. Every socket takes a slot of the
/// socket budget first; one that gets none is closed at once (the budget
/// logs it), so the listen backlog never fills with clients nobody serves.
async fn accept_loop(
    amqp: AmqpListeners,
    shared: Shared,
    mut shutdown: watch::Receiver<bool>,
    lock: std::fs::File,
) -> std::fs::File {
    let mut connections = JoinSet::new();
    let mut next = 0;
    loop {
        tokio::select! {
            accepted = listen::accept_any(&amqp.listeners, &mut next) => match accepted {
                Ok((stream, peer, from)) => {
                    if shared.maintenance.draining() {
                        // Closed at once: the client goes to another node.
                        tracing::debug!(%peer, "AMQP client refused: the node is drained");
                        continue;
                    }
                    let Some(slot) = shared.sockets.admit(SocketKind::Amqp, peer) else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    let stop = shutdown.clone();
                    match &amqp.tls {
                        Some(certs) if from >= amqp.secure_from => {
                            let certs = Arc::clone(certs);
                            connections.spawn(shared.serve_tls(certs, stream, peer, slot, stop));
                        }
                        _ => {
                            connections.spawn(shared.serve_plain(stream, peer, slot, stop));
                        }
                    }
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
    drop(amqp);
    while connections.join_next().await.is_some() {}
    lock
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
