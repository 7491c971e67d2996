//! What goes into a step and what comes out of it, for the core and the
//! model alike.

/// The queues of every test: one durable, one not.
pub const QUEUES: [&str; 2] = ["durable", "transient"];
/// Channels that consume, get and settle (ids 1..=3 in the core).
pub const CHANNELS: usize = 3;

/// One step, with every choice made (tags resolved against the model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Publish {
        queue: usize,
        persistent: bool,
    },
    Consume {
        channel: usize,
        queue: usize,
        no_ack: bool,
        tag: String,
    },
    Cancel {
        channel: usize,
        tag: String,
    },
    Get {
        channel: usize,
        queue: usize,
        no_ack: bool,
    },
    Ack {
        channel: usize,
        tag: u64,
        multiple: bool,
    },
    Nack {
        channel: usize,
        tag: u64,
        multiple: bool,
        requeue: bool,
    },
    Reject {
        channel: usize,
        tag: u64,
        requeue: bool,
    },
    Qos {
        channel: usize,
        prefetch: u16,
        global: bool,
    },
    Recover {
        channel: usize,
    },
    /// The server hands the channel what its queues pushed to it.
    Pump {
        channel: usize,
    },
    Close {
        channel: usize,
    },
    Restart,
}

/// The same thing said by the core or by the model, compared after every step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub reply: Reply,
    pub queues: Vec<QueueView>,
    pub channels: Vec<ChannelView>,
}

/// A queue's figures, as the management API reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueView {
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u32,
    /// Body bytes of the ready and of the unacked messages.
    pub ready_bytes: u64,
    pub unacked_bytes: u64,
    /// Persistent messages kept by a durable queue, ready or unacked.
    pub persistent: u64,
}

/// What the step itself answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok,
    /// The channel was closed with this reply code (and reopened).
    ChannelError(u16),
    GetOk {
        tag: u64,
        body: String,
        redelivered: bool,
        message_count: u32,
    },
    GetEmpty,
    /// basic.deliver frames the channel emitted.
    Delivered(Vec<Delivered>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub consumer: String,
    pub tag: u64,
    pub body: String,
    pub redelivered: bool,
}

/// A channel as the client can tell: its unacked count, its consumers, and
/// the deliveries queues pushed towards it that it has not handled yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelView {
    pub unacked: usize,
    pub consumers: usize,
    pub in_transit: Vec<InTransit>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InTransit {
    pub queue: String,
    pub consumer: String,
    pub body: String,
    pub redelivered: bool,
}

impl Observation {
    /// The parts where `self` (the core) and `model` differ, one per line,
    /// compactly: `m3*` is message m3 marked redelivered, `c2:m3` a
    /// delivery of m3 to consumer c2, `#4` delivery tag 4.
    pub fn diff(&self, model: &Observation) -> String {
        let mut lines = Vec::new();
        let mut part = |what: String, core: String, model: String| {
            if core != model {
                lines.push(format!("  {what}:\n    core:  {core}\n    model: {model}"));
            }
        };
        part("reply".into(), self.reply.show(), model.reply.show());
        for (i, name) in QUEUES.iter().enumerate() {
            let show = |o: &Observation| {
                let q = o.queues[i];
                format!(
                    "ready {} ({} B), unacked {} ({} B), consumers {}, persistent {}",
                    q.ready, q.ready_bytes, q.unacked, q.unacked_bytes, q.consumers, q.persistent
                )
            };
            part(format!("queue {name}"), show(self), show(model));
        }
        for i in 0..CHANNELS {
            let show = |o: &Observation| {
                let c = &o.channels[i];
                let transit: Vec<String> = c
                    .in_transit
                    .iter()
                    .map(|t| {
                        format!(
                            "{}:{}{} from {}",
                            t.consumer,
                            t.body,
                            star(t.redelivered),
                            t.queue
                        )
                    })
                    .collect();
                format!(
                    "unacked {}, consumers {}, in transit [{}]",
                    c.unacked,
                    c.consumers,
                    transit.join(", ")
                )
            };
            part(format!("channel {i}"), show(self), show(model));
        }
        lines.join("\n")
    }
}

fn star(redelivered: bool) -> &'static str {
    if redelivered {
        "*"
    } else {
        ""
    }
}

impl Reply {
    fn show(&self) -> String {
        match self {
            Reply::GetOk {
                tag,
                body,
                redelivered,
                message_count,
            } => format!(
                "get-ok #{tag} {body}{} ({message_count} left)",
                star(*redelivered)
            ),
            Reply::Delivered(list) => {
                let shown: Vec<String> = list
                    .iter()
                    .map(|d| {
                        format!(
                            "{}:{}{} #{}",
                            d.consumer,
                            d.body,
                            star(d.redelivered),
                            d.tag
                        )
                    })
                    .collect();
                format!("delivered [{}]", shown.join(", "))
            }
            other => format!("{other:?}"),
        }
    }
}
