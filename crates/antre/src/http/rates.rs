//! Message rates for the management API.
//!
//! The broker keeps only monotonic counters (cheap atomics on the hot path).
//! A sampler task reads them every `rate_interval` (5 s by default) and
//! keeps, per counter, the rate over the last interval:
//! `(value now - value before) / seconds between the two samples`. A counter
//! that went backwards (a queue deleted and declared again) gives 0. The
//! sampler also keeps the last [`HISTORY`] broker-wide samples, which the UI
//! draws as charts (`GET /api/overview?msg_rates_age=600`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use antre_broker::queue::{share_free, QueueStats};
use antre_broker::Broker;
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::registry::{now_ms, Registry, Traffic};

/// Broker-wide samples kept for charts (10 minutes at the default interval).
pub const HISTORY: usize = 120;

/// Counters of one queue at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueSample {
    /// Messages published into it.
    pub publish: u64,
    /// Messages delivered or fetched.
    pub deliver_get: u64,
    /// Redeliveries.
    pub redeliver: u64,
    /// Acks.
    pub ack: u64,
    /// Deliveries to consumers that ack.
    pub deliver: u64,
    /// Deliveries to consumers that do not.
    pub deliver_no_ack: u64,
    /// basic.get answers to ack.
    pub get: u64,
    /// basic.get answers acked on the way.
    pub get_no_ack: u64,
    /// basic.get answered empty.
    pub get_empty: u64,
    /// Ready messages.
    pub ready: u64,
    /// Unacked messages.
    pub unacked: u64,
    /// ms held back and ms watched (see [`antre_broker::queue::share_free`]).
    pub held: (u64, u64),
}

impl QueueSample {
    /// What says whether anything happened in the queue: all but the
    /// clock of its consumers' utilisation, which runs on its own.
    fn activity(&self) -> QueueSample {
        QueueSample {
            held: (0, 0),
            ..*self
        }
    }
}

/// Broker-wide counters and depths at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OverviewSample {
    /// When, in ms since the epoch.
    pub timestamp: u64,
    /// Messages published.
    pub publish: u64,
    /// Deliveries and gets.
    pub deliver_get: u64,
    /// Redeliveries.
    pub redeliver: u64,
    /// Acks.
    pub ack: u64,
    /// Confirms.
    pub confirm: u64,
    /// Unroutable messages dropped.
    pub drop_unroutable: u64,
    /// Unroutable messages returned.
    pub return_unroutable: u64,
    /// Ready messages in all queues.
    pub ready: u64,
    /// Unacked messages in all queues.
    pub unacked: u64,
}

impl OverviewSample {
    /// Adds another node's counters and depths (the time stays ours).
    fn add(&mut self, o: &OverviewSample) {
        self.publish += o.publish;
        self.deliver_get += o.deliver_get;
        self.redeliver += o.redeliver;
        self.ack += o.ack;
        self.confirm += o.confirm;
        self.drop_unroutable += o.drop_unroutable;
        self.return_unroutable += o.return_unroutable;
        self.ready += o.ready;
        self.unacked += o.unacked;
    }
}

/// The cluster's chart samples: at each of this node's sample times, every
/// other member's counters as they stood then, added to ours. Members
/// sample on their own clocks, so "then" is a member's latest sample up to
/// half an interval (`slack_ms`) after ours; a member that has none as old
/// (it started later) counts with its first, so that its whole history
/// does not show as one burst in the chart's rates.
pub fn cluster_history(
    mut ours: Vec<OverviewSample>,
    others: &[Vec<OverviewSample>],
    slack_ms: u64,
) -> Vec<OverviewSample> {
    for theirs in others.iter().filter(|t| !t.is_empty()) {
        for s in &mut ours {
            let until = s.timestamp.saturating_add(slack_ms);
            let at = theirs.partition_point(|t| t.timestamp <= until);
            s.add(&theirs[at.saturating_sub(1)]);
        }
    }
    ours
}

/// Rates of the broker-wide counters, per second.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OverviewRates {
    /// Publishes.
    pub publish: f64,
    /// Deliveries and gets.
    pub deliver_get: f64,
    /// Redeliveries.
    pub redeliver: f64,
    /// Acks.
    pub ack: f64,
    /// Confirms.
    pub confirm: f64,
    /// Dropped unroutable.
    pub drop_unroutable: f64,
    /// Returned unroutable.
    pub return_unroutable: f64,
    /// Change of ready messages.
    pub ready: f64,
    /// Change of unacked messages.
    pub unacked: f64,
}

/// Rates of one queue, per second.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueRates {
    /// Publishes.
    pub publish: f64,
    /// Deliveries and gets.
    pub deliver_get: f64,
    /// Redeliveries.
    pub redeliver: f64,
    /// Acks.
    pub ack: f64,
    /// Deliveries to consumers that ack.
    pub deliver: f64,
    /// Deliveries to consumers that do not.
    pub deliver_no_ack: f64,
    /// basic.get answers to ack.
    pub get: f64,
    /// basic.get answers acked on the way.
    pub get_no_ack: f64,
    /// basic.get answered empty.
    pub get_empty: f64,
    /// Change of ready messages.
    pub ready: f64,
    /// Change of unacked messages.
    pub unacked: f64,
    /// The share of the interval its consumers could take its messages
    /// (RabbitMQ's consumer utilisation).
    pub utilisation: f64,
}

/// A channel's `message_stats` counters at one moment, in the order of
/// [`antre_broker::channel::ChannelStats::counters`].
pub type ChannelSample = [u64; 12];
/// Their rates, per second.
pub type ChannelRates = [f64; 12];

/// A vhost's traffic rates, per second: its channels' counters (in
/// [`Traffic::counters`]' order), then bytes received and sent.
pub type VhostRates = ([f64; 12], f64, f64);

/// This node's counters beyond the overview's charts, by RabbitMQ's
/// names: the parts of `deliver_get` and the objects' churn (a node's
/// `connection_created`, ..., the overview's `churn_rates`).
pub fn node_counters(broker: &Broker, registry: &Registry) -> Vec<(&'static str, u64)> {
    let m = &broker.metrics;
    let t = registry.totals();
    let (mut declared, mut created, mut deleted) = (0, 0, 0);
    for v in broker.vhosts() {
        let life = v.queue_lifecycle();
        declared += life.declared;
        created += life.created;
        deleted += life.deleted;
    }
    vec![
        ("deliver", m.total(|c| &c.delivered_consume_manual_ack)),
        ("deliver_no_ack", m.total(|c| &c.delivered_consume_auto_ack)),
        ("get", m.total(|c| &c.delivered_get_manual_ack)),
        ("get_no_ack", m.total(|c| &c.delivered_get_auto_ack)),
        ("get_empty", m.total(|c| &c.get_empty)),
        ("connection_created", t.connections_opened),
        ("connection_closed", t.connections_closed),
        ("channel_created", t.channels_opened),
        ("channel_closed", t.channels_closed),
        ("queue_declared", declared),
        ("queue_created", created),
        ("queue_deleted", deleted),
    ]
}

/// The per-second rate of a counter between two samples.
pub fn rate(before: u64, now: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    now.saturating_sub(before) as f64 / seconds
}

/// The per-second change of a gauge (may be negative).
pub fn change(before: u64, now: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    (now as f64 - before as f64) / seconds
}

/// For each object of a sample (`now`, by key): since when it has been
/// at rest (`at` if it is new or changed since the `last` sample, as
/// `same` compares two readings, else the time in `before`, the previous
/// answer), and whether it changed. A queue's and a channel's
/// `idle_since` come from it.
fn activity<K: Eq + std::hash::Hash + Clone, S>(
    now: &HashMap<K, S>,
    last: &HashMap<K, S>,
    before: &HashMap<K, (u64, bool)>,
    at: u64,
    same: impl Fn(&S, &S) -> bool,
) -> HashMap<K, (u64, bool)> {
    now.iter()
        .map(|(key, reading)| {
            let changed = !last.get(key).is_some_and(|l| same(l, reading));
            let since = match before.get(key) {
                Some(&(since, _)) if !changed => since,
                _ => at,
            };
            (key.clone(), (since, changed))
        })
        .collect()
}

#[derive(Debug, Default)]
struct State {
    last: Option<(Instant, OverviewSample)>,
    overview: OverviewRates,
    queues_last: HashMap<(String, String), QueueSample>,
    queues: HashMap<(String, String), QueueRates>,
    /// Per queue, the time of the last sample that found it changed (its
    /// counters or depths), and whether the latest one did.
    queues_active: HashMap<(String, String), (u64, bool)>,
    conns_last: HashMap<u64, (u64, u64)>,
    conns: HashMap<u64, (f64, f64)>,
    chans_last: HashMap<(u64, u16), ChannelSample>,
    chans: HashMap<(u64, u16), ChannelRates>,
    /// Per channel, as `queues_active` per queue.
    chans_active: HashMap<(u64, u16), (u64, bool)>,
    node_last: Vec<(&'static str, u64)>,
    node: HashMap<&'static str, f64>,
    vhosts_last: HashMap<String, Traffic>,
    vhosts: HashMap<String, VhostRates>,
    /// Per vhost, how fast its queues' ready and unacked messages change
    /// (their rates added up, once per sample rather than per request).
    vhost_depths: HashMap<String, (f64, f64)>,
    /// Per (vhost, exchange), `publish_in` and `publish_out`, and their
    /// rates.
    exchanges_last: HashMap<(String, String), [u64; 2]>,
    exchanges: HashMap<(String, String), [f64; 2]>,
    history: VecDeque<OverviewSample>,
}

/// The sampler's latest results.
#[derive(Debug, Default)]
pub struct Rates {
    state: RwLock<State>,
}

impl Rates {
    /// Samples now, then every `interval` until `shutdown`.
    pub fn start(
        broker: Arc<Broker>,
        registry: Arc<Registry>,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> Arc<Rates> {
        let rates = Arc::new(Rates::default());
        let sampler = Arc::clone(&rates);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = ticker.tick() => sampler.sample(&broker, &registry, Instant::now()),
                    _ = shutdown.changed() => return,
                }
            }
        });
        rates
    }

    /// Takes one sample and updates every rate.
    pub fn sample(&self, broker: &Broker, registry: &Registry, at: Instant) {
        let m = &broker.metrics;
        let mut overview = OverviewSample {
            timestamp: now_ms(),
            publish: m.published.get(),
            deliver_get: m.total(|c| &c.delivered),
            redeliver: m.total(|c| &c.redelivered),
            ack: m.total(|c| &c.acked),
            confirm: m.confirmed.get(),
            drop_unroutable: m.unroutable.get().saturating_sub(m.returned.get()),
            return_unroutable: m.returned.get(),
            ready: 0,
            unacked: 0,
        };
        let mut queues = HashMap::new();
        for v in broker.vhosts() {
            for q in v.queues() {
                let c = q.stats();
                overview.ready += c.ready.count;
                overview.unacked += c.unacked.count;
                let m = &q.metrics;
                let s = QueueSample {
                    publish: m.published.get(),
                    deliver_get: m.delivered.get(),
                    redeliver: m.redelivered.get(),
                    ack: m.acked.get(),
                    deliver: m.consumed(),
                    deliver_no_ack: m.consumed_no_ack.get(),
                    get: m.got.get(),
                    get_no_ack: m.got_no_ack.get(),
                    get_empty: m.get_empty.get(),
                    ready: c.ready.count,
                    unacked: c.unacked.count,
                    held: c.held,
                };
                queues.insert((q.vhost.clone(), q.name.clone()), s);
            }
        }
        let conns: HashMap<u64, (u64, u64)> = registry
            .connections()
            .iter()
            .map(|c| {
                let recv = c.recv_oct.load(std::sync::atomic::Ordering::Relaxed);
                let send = c.send_oct.load(std::sync::atomic::Ordering::Relaxed);
                (c.id, (recv, send))
            })
            .collect();
        let chans: HashMap<(u64, u16), ChannelSample> = registry
            .connections()
            .iter()
            .flat_map(|c| {
                c.channels().into_iter().filter_map(|n| {
                    let (_, stats) = c.channel(n)?;
                    Some(((c.id, n), stats.counters().map(|(_, v)| v)))
                })
            })
            .collect();
        let node = node_counters(broker, registry);
        let names: std::collections::HashSet<String> =
            broker.vhosts().iter().map(|v| v.name.clone()).collect();
        registry.forget_traffic(|v| names.contains(v));
        let flows: HashMap<(String, String), [u64; 2]> = broker
            .vhosts()
            .iter()
            .flat_map(|v| {
                let totals = v.exchange_flows().totals();
                totals
                    .into_iter()
                    .map(|(name, flow)| ((v.name.clone(), name), flow))
            })
            .collect();
        let traffic: HashMap<String, Traffic> = registry.traffic();
        let mut st = self.state.write();
        if let Some((then, before)) = st.last {
            let dt = at.duration_since(then).as_secs_f64();
            let last: HashMap<&str, u64> = st.node_last.iter().copied().collect();
            st.node = node
                .iter()
                .map(|&(name, now)| {
                    let b = last.get(name).copied().unwrap_or(now);
                    (name, rate(b, now, dt))
                })
                .collect();
            st.overview = OverviewRates {
                publish: rate(before.publish, overview.publish, dt),
                deliver_get: rate(before.deliver_get, overview.deliver_get, dt),
                redeliver: rate(before.redeliver, overview.redeliver, dt),
                ack: rate(before.ack, overview.ack, dt),
                confirm: rate(before.confirm, overview.confirm, dt),
                drop_unroutable: rate(before.drop_unroutable, overview.drop_unroutable, dt),
                return_unroutable: rate(before.return_unroutable, overview.return_unroutable, dt),
                ready: change(before.ready, overview.ready, dt),
                unacked: change(before.unacked, overview.unacked, dt),
            };
            st.queues = queues
                .iter()
                .map(|(key, now)| {
                    let b = st.queues_last.get(key).copied().unwrap_or(*now);
                    let r = QueueRates {
                        publish: rate(b.publish, now.publish, dt),
                        deliver_get: rate(b.deliver_get, now.deliver_get, dt),
                        redeliver: rate(b.redeliver, now.redeliver, dt),
                        ack: rate(b.ack, now.ack, dt),
                        deliver: rate(b.deliver, now.deliver, dt),
                        deliver_no_ack: rate(b.deliver_no_ack, now.deliver_no_ack, dt),
                        get: rate(b.get, now.get, dt),
                        get_no_ack: rate(b.get_no_ack, now.get_no_ack, dt),
                        get_empty: rate(b.get_empty, now.get_empty, dt),
                        ready: change(b.ready, now.ready, dt),
                        unacked: change(b.unacked, now.unacked, dt),
                        utilisation: share_free(b.held, now.held),
                    };
                    (key.clone(), r)
                })
                .collect();
            let mut depths: HashMap<String, (f64, f64)> = HashMap::new();
            for ((vhost, _), r) in &st.queues {
                let d = depths.entry(vhost.clone()).or_default();
                d.0 += r.ready;
                d.1 += r.unacked;
            }
            st.vhost_depths = depths;
            st.conns = conns
                .iter()
                .map(|(id, now)| {
                    let b = st.conns_last.get(id).copied().unwrap_or(*now);
                    (*id, (rate(b.0, now.0, dt), rate(b.1, now.1, dt)))
                })
                .collect();
            st.vhosts = traffic
                .iter()
                .map(|(name, now)| {
                    let b = st.vhosts_last.get(name).copied().unwrap_or(*now);
                    let counters =
                        std::array::from_fn(|i| rate(b.counters[i], now.counters[i], dt));
                    let recv = rate(b.recv_oct, now.recv_oct, dt);
                    (
                        name.clone(),
                        (counters, recv, rate(b.send_oct, now.send_oct, dt)),
                    )
                })
                .collect();
            st.exchanges = flows
                .iter()
                .map(|(key, now)| {
                    let b = st.exchanges_last.get(key).unwrap_or(now);
                    (
                        key.clone(),
                        [rate(b[0], now[0], dt), rate(b[1], now[1], dt)],
                    )
                })
                .collect();
            st.chans = chans
                .iter()
                .map(|(key, now)| {
                    let b = st.chans_last.get(key).copied().unwrap_or(*now);
                    (*key, std::array::from_fn(|i| rate(b[i], now[i], dt)))
                })
                .collect();
        }
        st.queues_active = activity(
            &queues,
            &st.queues_last,
            &st.queues_active,
            overview.timestamp,
            |a, b| a.activity() == b.activity(),
        );
        st.chans_active = activity(
            &chans,
            &st.chans_last,
            &st.chans_active,
            overview.timestamp,
            |a, b| a == b,
        );
        st.last = Some((at, overview));
        st.queues_last = queues;
        st.conns_last = conns;
        st.chans_last = chans;
        st.node_last = node;
        st.vhosts_last = traffic;
        st.exchanges_last = flows;
        st.history.push_back(overview);
        while st.history.len() > HISTORY {
            st.history.pop_front();
        }
    }

    /// Broker-wide rates.
    pub fn overview(&self) -> OverviewRates {
        self.state.read().overview
    }

    /// A queue's rates (zero until it has been sampled twice).
    pub fn queue(&self, vhost: &str, name: &str) -> QueueRates {
        self.queue_sampled(vhost, name).unwrap_or_default()
    }

    /// A queue's rates, once it has been sampled twice.
    pub fn queue_sampled(&self, vhost: &str, name: &str) -> Option<QueueRates> {
        self.state
            .read()
            .queues
            .get(&(vhost.to_owned(), name.to_owned()))
            .copied()
    }

    /// RabbitMQ's consumer utilisation of a queue whose figures are
    /// `stats`: 0 without consumers, else the share of the last interval
    /// its consumers could take its messages (of its life so far, until
    /// it has been sampled twice).
    pub fn utilisation(&self, q: &antre_broker::Queue, stats: &QueueStats) -> f64 {
        if stats.consumers == 0 {
            return 0.0;
        }
        match self.queue_sampled(&q.vhost, &q.name) {
            Some(r) => r.utilisation,
            None => share_free((0, 0), stats.held),
        }
    }

    /// Since when (ms since the epoch) a queue has been idle: set when the
    /// latest sample found nothing changed in it since the one before (no
    /// publish, delivery, ack or change of depth), as RabbitMQ reports
    /// `idle_since` only for a queue at rest. The time is that of the last
    /// sample that found it active, so it is late by up to one interval.
    pub fn idle_since(&self, vhost: &str, name: &str) -> Option<u64> {
        match self
            .state
            .read()
            .queues_active
            .get(&(vhost.to_owned(), name.to_owned()))
        {
            Some(&(since, false)) => Some(since),
            _ => None,
        }
    }

    /// The rate of one of [`node_counters`] (zero until sampled twice).
    pub fn node(&self, name: &str) -> f64 {
        self.state
            .read()
            .node
            .get(name)
            .copied()
            .unwrap_or_default()
    }

    /// The rates of what this node's channels published through an
    /// exchange, in and out (zero until sampled twice).
    pub fn exchange(&self, vhost: &str, name: &str) -> [f64; 2] {
        self.state
            .read()
            .exchanges
            .get(&(vhost.to_owned(), name.to_owned()))
            .copied()
            .unwrap_or_default()
    }

    /// How fast the ready and unacked messages of a vhost's queues change
    /// on this node (zero until sampled twice). The queues another member
    /// owns have none here, so this is the change of the ones this node
    /// owns.
    pub fn vhost_depths(&self, name: &str) -> (f64, f64) {
        self.state
            .read()
            .vhost_depths
            .get(name)
            .copied()
            .unwrap_or_default()
    }

    /// A vhost's traffic rates on this node (zero until sampled twice).
    pub fn vhost(&self, name: &str) -> VhostRates {
        self.state
            .read()
            .vhosts
            .get(name)
            .copied()
            .unwrap_or_default()
    }

    /// A channel's `message_stats` rates (zero until sampled twice).
    pub fn channel(&self, connection: u64, number: u16) -> ChannelRates {
        self.state
            .read()
            .chans
            .get(&(connection, number))
            .copied()
            .unwrap_or_default()
    }

    /// Since when (ms since the epoch) a channel has been idle, as
    /// [`Rates::idle_since`] for a queue: none of its counters (publishes,
    /// deliveries, acks, ...) moved between the last two samples.
    pub fn channel_idle_since(&self, connection: u64, number: u16) -> Option<u64> {
        match self.state.read().chans_active.get(&(connection, number)) {
            Some(&(since, false)) => Some(since),
            _ => None,
        }
    }

    /// A connection's (receive, send) bytes per second.
    pub fn connection(&self, id: u64) -> (f64, f64) {
        self.state
            .read()
            .conns
            .get(&id)
            .copied()
            .unwrap_or_default()
    }

    /// Broker-wide samples newer than `age`, oldest first.
    pub fn history(&self, age: Duration) -> Vec<OverviewSample> {
        let cutoff = now_ms().saturating_sub(age.as_millis() as u64);
        self.state
            .read()
            .history
            .iter()
            .filter(|s| s.timestamp >= cutoff)
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clusters_samples_add_each_members_counters_as_they_stood_then() {
        let at = |timestamp, publish| OverviewSample {
            timestamp,
            publish,
            ready: publish / 10,
            ..OverviewSample::default()
        };
        let ours = vec![at(10_000, 1), at(15_000, 2), at(20_000, 3)];
        // Sampled 2 s after us: its sample at 12 s is ours at 10 s (within
        // half an interval), and so on.
        let early = vec![at(7_000, 100), at(12_000, 200), at(17_000, 300)];
        // Started later: its first sample stands for the times before it.
        let late = vec![at(18_000, 1000), at(23_000, 2000)];
        let got = cluster_history(ours, &[early, late, Vec::new()], 2_500);
        let publish: Vec<u64> = got.iter().map(|s| s.publish).collect();
        assert_eq!(publish, [1201, 1302, 1303]);
        let ready: Vec<u64> = got.iter().map(|s| s.ready).collect();
        assert_eq!(ready, [120, 130, 130]);
        let times: Vec<u64> = got.iter().map(|s| s.timestamp).collect();
        assert_eq!(times, [10_000, 15_000, 20_000], "our times stay");
    }

    #[test]
    fn rates_are_deltas_over_elapsed_seconds() {
        assert_eq!(rate(100, 600, 5.0), 100.0);
        assert_eq!(rate(600, 100, 5.0), 0.0, "a reset counter gives 0");
        assert_eq!(rate(0, 10, 0.0), 0.0);
        assert_eq!(change(10, 0, 5.0), -2.0);
    }

    #[test]
    fn the_sampler_turns_counters_into_rates() {
        let broker = Broker::new();
        let registry = Registry::default();
        let rates = Rates::default();
        let t0 = Instant::now();
        rates.sample(&broker, &registry, t0);
        broker.metrics.published.add(50);
        broker.metrics.classic.acked.add(6);
        broker.metrics.quorum.acked.add(4);
        rates.sample(&broker, &registry, t0 + Duration::from_secs(5));
        let r = rates.overview();
        assert_eq!(r.publish, 10.0);
        assert_eq!(r.ack, 2.0);
        assert_eq!(rates.history(Duration::from_secs(600)).len(), 2);
    }
}
