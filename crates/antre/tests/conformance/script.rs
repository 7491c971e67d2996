//! The scenario language: one step per line, read from
//! `scenarios/<group>.amqp`. README.md beside this file is its reference.
//!
//! Hand-written rather than a TOML or JSON schema because scenarios are
//! written by the hundred and read by people: a line such as
//! `send 1 queue.delete queue=q if_empty=true` says exactly which frame goes
//! out, where a serialised structure would bury it in punctuation.

use antre_amqp::method::*;
use antre_amqp::{BasicProperties, FieldTable, FieldValue, Method};
use bytes::Bytes;

/// Which connection a step talks to: `None` is the default one, `Some("b")`
/// the one opened by `connect b`.
pub type Conn = Option<String>;

/// One scenario: a name, what it shows, and its steps.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub about: String,
    pub steps: Vec<Step>,
    /// Queue and exchange names the scenario touches, deleted after it runs
    /// so that the next scenario starts from a clean broker.
    pub names: Vec<(Kind, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Queue,
    Exchange,
}

/// Handshake parameters of a `connect` step.
#[derive(Debug, Clone)]
pub struct Connect {
    pub user: String,
    pub password: String,
    pub vhost: String,
    pub mechanism: String,
    /// 0 echoes what the server proposed.
    pub channel_max: u16,
    /// 0 echoes what the server proposed.
    pub frame_max: u32,
    pub heartbeat: u16,
    /// Announce the client capabilities of a modern client (pika, the Java
    /// client): consumer_cancel_notify, authentication_failure_close, ...
    pub capabilities: bool,
    /// Record connection.start's mechanisms and capabilities.
    pub show_start: bool,
    /// Record the handshake's replies (tune, open-ok) at all.
    pub explicit: bool,
    /// Send these bytes instead of the AMQP 0-9-1 protocol header, and
    /// record what the server answers.
    pub header: Option<Vec<u8>>,
}

impl Connect {
    pub fn implicit() -> Connect {
        Connect {
            user: "guest".into(),
            password: "guest".into(),
            vhost: "/".into(),
            mechanism: "PLAIN".into(),
            channel_max: 0,
            frame_max: 0,
            heartbeat: 0,
            capabilities: true,
            show_start: false,
            explicit: false,
            header: None,
        }
    }
}

/// One step of a scenario.
#[derive(Debug, Clone)]
pub enum Step {
    /// Open a connection and complete (or attempt) the handshake.
    Connect(Conn, Connect),
    /// Send a method; when it is synchronous, wait for its reply.
    Send(Conn, u16, Method),
    /// Send basic.publish, a content header and the body.
    Publish {
        conn: Conn,
        channel: u16,
        publish: BasicPublish,
        properties: BasicProperties,
        body: Bytes,
    },
    /// Read until this method arrives on this channel.
    Expect(Conn, u16, String),
    /// A round trip on the channel (a passive declare of amq.direct), so
    /// that everything the server sent before it has been read.
    Sync(Conn, u16),
    /// A frame with the given type, channel and payload; size and frame end
    /// are filled in unless `size` overrides the size field.
    Frame {
        conn: Conn,
        kind: u8,
        channel: u16,
        payload: Vec<u8>,
        size: Option<u32>,
        end: u8,
    },
    /// Raw bytes, as they are.
    Bytes(Conn, Vec<u8>),
    /// A content header frame on its own.
    Header {
        conn: Conn,
        channel: u16,
        class_id: u16,
        body_size: u64,
        properties: BasicProperties,
    },
    /// A body frame on its own.
    Body(Conn, u16, Bytes),
    /// Close the socket without connection.close.
    Drop(Conn),
}

/// Parses a scenario file. Errors name the line.
pub fn parse(text: &str) -> Result<Vec<Scenario>, String> {
    let mut out: Vec<Scenario> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |e: String| format!("line {}: {e}: {line}", n + 1);
        if let Some(rest) = line.strip_prefix("scenario ") {
            let (name, about) = rest.split_once(':').unwrap_or((rest, ""));
            let name = name.trim().to_owned();
            if out.iter().any(|s| s.name == name) {
                return Err(fail(format!("scenario {name} defined twice")));
            }
            out.push(Scenario {
                name,
                about: about.trim().to_owned(),
                steps: Vec::new(),
                names: Vec::new(),
            });
            continue;
        }
        let Some(scenario) = out.last_mut() else {
            return Err(fail("a step before the first scenario".into()));
        };
        let step = parse_step(line, &mut scenario.names).map_err(fail)?;
        scenario.steps.push(step);
    }
    Ok(out)
}

fn parse_step(line: &str, names: &mut Vec<(Kind, String)>) -> Result<Step, String> {
    let tokens = tokenize(line)?;
    let (verb, rest) = tokens.split_first().ok_or("empty step")?;
    let mut args = Args::new(rest)?;
    let step = match verb.as_str() {
        "connect" => {
            let conn = args.positional();
            let d = Connect::implicit();
            Step::Connect(
                conn,
                Connect {
                    user: args.s("user")?.unwrap_or(d.user),
                    password: args.s("password")?.unwrap_or(d.password),
                    vhost: args.s("vhost")?.unwrap_or(d.vhost),
                    mechanism: args.s("mechanism")?.unwrap_or(d.mechanism),
                    channel_max: args.num("channel_max")?.unwrap_or(d.channel_max),
                    frame_max: args.num("frame_max")?.unwrap_or(d.frame_max),
                    heartbeat: args.num("heartbeat")?.unwrap_or(d.heartbeat),
                    capabilities: args.flag("capabilities")?.unwrap_or(true),
                    show_start: args.flag("show_start")?.unwrap_or(false),
                    explicit: true,
                    header: args.s("header")?.map(|h| hex(&h)).transpose()?,
                },
            )
        }
        "open" => {
            let (conn, ch) = channel_ref(args.positional().as_deref())?;
            Step::Send(conn, ch, ChannelOpen::default().into())
        }
        "send" => {
            let (conn, ch) = channel_ref(args.positional().as_deref())?;
            let name = args.positional().ok_or("send needs a method name")?;
            let method = build_method(&name, &mut args)?;
            note_names(&method, names);
            Step::Send(conn, ch, method)
        }
        "publish" => {
            let (conn, ch) = channel_ref(args.positional().as_deref())?;
            let publish = BasicPublish {
                exchange: args.s("exchange")?.unwrap_or_default(),
                routing_key: args.s("routing_key")?.unwrap_or_default(),
                mandatory: args.flag("mandatory")?.unwrap_or(false),
                immediate: args.flag("immediate")?.unwrap_or(false),
                ticket: 0,
            };
            let properties = args.properties()?;
            let body = args.body()?;
            Step::Publish {
                conn,
                channel: ch,
                publish,
                properties,
                body,
            }
        }
        "expect" => {
            let (conn, ch) = channel_ref(args.positional().as_deref())?;
            let name = args.positional().ok_or("expect needs a method name")?;
            Step::Expect(conn, ch, name)
        }
        "sync" => {
            let (conn, ch) = channel_ref(args.positional().as_deref())?;
            Step::Sync(conn, ch)
        }
        "frame" => {
            let kind = args.positional().ok_or("frame needs a type")?;
            let kind = kind.parse().map_err(|_| format!("bad frame type {kind}"))?;
            let (conn, ch) = channel_ref(args.positional().as_deref())?;
            let payload = hex(&args.positional().unwrap_or_default())?;
            Step::Frame {
                conn,
                kind,
                channel: ch,
                payload,
                size: args.num("size")?,
                end: args.num("end")?.unwrap_or(0xCE),
            }
        }
        "bytes" => {
            let conn = args.s("conn")?;
            Step::Bytes(conn, hex(&args.positional().ok_or("bytes needs hex")?)?)
        }
        "header" => {
            let (conn, ch) = channel_ref(args.positional().as_deref())?;
            Step::Header {
                conn,
                channel: ch,
                class_id: args.num("class_id")?.unwrap_or(60),
                body_size: args.num("body_size")?.unwrap_or(0),
                properties: args.properties()?,
            }
        }
        "body" => {
            let (conn, ch) = channel_ref(args.positional().as_deref())?;
            Step::Body(conn, ch, args.body()?)
        }
        "drop" => Step::Drop(args.positional()),
        other => return Err(format!("unknown step {other}")),
    };
    args.finish()?;
    Ok(step)
}

/// `1` is channel 1 of the default connection, `b:1` channel 1 of `b`.
fn channel_ref(token: Option<&str>) -> Result<(Conn, u16), String> {
    let token = token.ok_or("missing channel")?;
    let (conn, ch) = match token.split_once(':') {
        Some((c, n)) => (Some(c.to_owned()), n),
        None => (None, token),
    };
    let ch = ch.parse().map_err(|_| format!("bad channel {token}"))?;
    Ok((conn, ch))
}

fn note_names(method: &Method, names: &mut Vec<(Kind, String)>) {
    let mut add = |kind, name: &str| {
        let reserved = name.is_empty() || name.starts_with("amq.");
        if !reserved && !names.iter().any(|(k, n)| *k == kind && n == name) {
            names.push((kind, name.to_owned()));
        }
    };
    match method {
        Method::QueueDeclare(m) => add(Kind::Queue, &m.queue),
        Method::QueueBind(m) => add(Kind::Exchange, &m.exchange),
        Method::ExchangeDeclare(m) => add(Kind::Exchange, &m.exchange),
        Method::ExchangeBind(m) => {
            add(Kind::Exchange, &m.source);
            add(Kind::Exchange, &m.destination);
        }
        _ => {}
    }
    // Dead-letter and alternate exchanges named in arguments are declared by
    // their own steps, so they are noted there.
}

/// Splits on whitespace; a double-quoted part (with `\"` and `\\`) keeps
/// its spaces and marks the value as a string.
fn tokenize(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut has = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                cur.push('"');
                has = true;
            }
            '\\' if in_quotes => match chars.next() {
                Some(e) => cur.push(e),
                None => return Err("dangling backslash".into()),
            },
            '#' if !in_quotes && !has => break,
            c if c.is_whitespace() && !in_quotes => {
                if has {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            c => {
                cur.push(c);
                has = true;
            }
        }
    }
    if in_quotes {
        return Err("unterminated quote".into());
    }
    if has {
        out.push(cur);
    }
    Ok(out)
}

fn hex(s: &str) -> Result<Vec<u8>, String> {
    let s: String = s.chars().filter(|c| *c != '_').collect();
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd hex {s}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| format!("bad hex {s}")))
        .collect()
}

/// The `key=value` arguments of a step; each must be used exactly once.
struct Args {
    positional: Vec<String>,
    named: Vec<(String, String, bool)>,
}

impl Args {
    fn new(tokens: &[String]) -> Result<Args, String> {
        let mut positional = Vec::new();
        let mut named = Vec::new();
        for t in tokens {
            match t.split_once('=') {
                Some((k, v)) if !t.starts_with('"') => {
                    named.push((k.to_owned(), v.to_owned(), false))
                }
                _ => positional.push(unquote(t).to_owned()),
            }
        }
        positional.reverse();
        Ok(Args { positional, named })
    }

    fn positional(&mut self) -> Option<String> {
        self.positional.pop()
    }

    fn take(&mut self, key: &str) -> Option<String> {
        let entry = self
            .named
            .iter_mut()
            .find(|(k, _, used)| k == key && !used)?;
        entry.2 = true;
        Some(entry.1.clone())
    }

    fn s(&mut self, key: &str) -> Result<Option<String>, String> {
        Ok(self.take(key).map(|v| unquote(&v).to_owned()))
    }

    fn num<T: std::str::FromStr>(&mut self, key: &str) -> Result<Option<T>, String> {
        self.take(key)
            .map(|v| v.parse().map_err(|_| format!("{key}={v} is not a number")))
            .transpose()
    }

    fn flag(&mut self, key: &str) -> Result<Option<bool>, String> {
        self.take(key)
            .map(|v| match v.as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(format!("{key}={v} is not true/false")),
            })
            .transpose()
    }

    /// Every `<prefix><key>=value` as a field table, in the order written.
    fn table(&mut self, prefix: &str) -> Result<FieldTable, String> {
        let mut t = FieldTable::new();
        for (k, v, used) in self.named.iter_mut() {
            if let Some(key) = k.strip_prefix(prefix) {
                t.insert(key.to_owned(), field_value(v)?);
                *used = true;
            }
        }
        Ok(t)
    }

    fn properties(&mut self) -> Result<BasicProperties, String> {
        let headers = self.table("hdr:")?;
        Ok(BasicProperties {
            content_type: self.s("prop:content_type")?,
            content_encoding: self.s("prop:content_encoding")?,
            headers: (!headers.is_empty()).then_some(headers),
            delivery_mode: self.num("prop:delivery_mode")?,
            priority: self.num("prop:priority")?,
            correlation_id: self.s("prop:correlation_id")?,
            reply_to: self.s("prop:reply_to")?,
            expiration: self.s("prop:expiration")?,
            message_id: self.s("prop:message_id")?,
            timestamp: self.num("prop:timestamp")?,
            kind: self.s("prop:type")?,
            user_id: self.s("prop:user_id")?,
            app_id: self.s("prop:app_id")?,
            cluster_id: None,
        })
    }

    /// `body="text"`, or `body_size=N` bytes of 'x'.
    fn body(&mut self) -> Result<Bytes, String> {
        if let Some(n) = self.num::<usize>("body_size")? {
            return Ok(Bytes::from(vec![b'x'; n]));
        }
        Ok(Bytes::from(self.s("body")?.unwrap_or_default()))
    }

    fn finish(self) -> Result<(), String> {
        if let Some(p) = self.positional.last() {
            return Err(format!("unexpected {p}"));
        }
        match self.named.iter().find(|(_, _, used)| !used) {
            Some((k, _, _)) => Err(format!("unknown argument {k}")),
            None => Ok(()),
        }
    }
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

/// A field value: `"text"` is a string, `true`/`false` a boolean, an
/// integer a signed 32-bit (64-bit if it does not fit), and `T:value` the
/// value with RabbitMQ's type tag `T` (b B s u I i l f d S t V, and `A` for
/// an array of comma-separated strings).
fn field_value(v: &str) -> Result<FieldValue, String> {
    if v.starts_with('"') {
        return Ok(FieldValue::string(unquote(v)));
    }
    let bad = || format!("bad field value {v}");
    if let Some((tag, rest)) = v.split_once(':').filter(|(t, _)| t.len() == 1) {
        let rest = unquote(rest);
        return Ok(match tag {
            "b" => FieldValue::I8(rest.parse().map_err(|_| bad())?),
            "B" => FieldValue::U8(rest.parse().map_err(|_| bad())?),
            "s" => FieldValue::I16(rest.parse().map_err(|_| bad())?),
            "u" => FieldValue::U16(rest.parse().map_err(|_| bad())?),
            "I" => FieldValue::I32(rest.parse().map_err(|_| bad())?),
            "i" => FieldValue::U32(rest.parse().map_err(|_| bad())?),
            "l" => FieldValue::I64(rest.parse().map_err(|_| bad())?),
            "f" => FieldValue::F32(rest.parse().map_err(|_| bad())?),
            "d" => FieldValue::F64(rest.parse().map_err(|_| bad())?),
            "S" => FieldValue::string(rest),
            "t" => FieldValue::Bool(rest == "true"),
            "V" => FieldValue::Void,
            "A" => FieldValue::Array(rest.split(',').map(FieldValue::string).collect()),
            _ => return Err(bad()),
        });
    }
    Ok(match v {
        "true" => FieldValue::Bool(true),
        "false" => FieldValue::Bool(false),
        _ => match v.parse::<i64>() {
            Ok(n) => match i32::try_from(n) {
                Ok(n) => FieldValue::I32(n),
                Err(_) => FieldValue::I64(n),
            },
            Err(_) => FieldValue::string(v),
        },
    })
}

/// Builds `Method::$Name` from the step's arguments, field by field; a
/// field not given takes its zero value.
macro_rules! build {
    ($args:ident, $Name:ident { $($field:ident : $get:ident),* $(,)? }) => {
        Method::$Name($Name {
            $( $field: build!(@get $args, $field, $get), )*
            ..Default::default()
        })
    };
    (@get $args:ident, $field:ident, s) => { $args.s(stringify!($field))?.unwrap_or_default() };
    (@get $args:ident, $field:ident, b) => { $args.flag(stringify!($field))?.unwrap_or(false) };
    (@get $args:ident, $field:ident, n) => { $args.num(stringify!($field))?.unwrap_or(0) };
    (@get $args:ident, $field:ident, t) => { $args.table("arg:")? };
    (@get $args:ident, $field:ident, x) => {
        Bytes::from($args.s(stringify!($field))?.unwrap_or_default())
    };
}

// The macro fills in every field a method has; for the methods whose fields
// the scenarios set in full, the struct update is then redundant.
#[allow(clippy::needless_update)]
fn build_method(name: &str, a: &mut Args) -> Result<Method, String> {
    Ok(match name {
        "connection.close" => build!(
            a,
            ConnectionClose {
                reply_code: n,
                reply_text: s,
                class_id: n,
                method_id: n
            }
        ),
        "connection.close-ok" => build!(a, ConnectionCloseOk {}),
        "connection.update-secret" => build!(
            a,
            ConnectionUpdateSecret {
                new_secret: x,
                reason: s
            }
        ),
        "connection.open" => build!(a, ConnectionOpen { virtual_host: s }),
        "connection.tune-ok" => build!(
            a,
            ConnectionTuneOk {
                channel_max: n,
                frame_max: n,
                heartbeat: n
            }
        ),
        "connection.secure-ok" => build!(a, ConnectionSecureOk { response: x }),
        "channel.open" => build!(a, ChannelOpen {}),
        "channel.flow" => build!(a, ChannelFlow { active: b }),
        "channel.flow-ok" => build!(a, ChannelFlowOk { active: b }),
        "channel.close" => build!(
            a,
            ChannelClose {
                reply_code: n,
                reply_text: s,
                class_id: n,
                method_id: n
            }
        ),
        "channel.close-ok" => build!(a, ChannelCloseOk {}),
        "exchange.declare" => build!(
            a,
            ExchangeDeclare {
                exchange: s,
                kind: s,
                passive: b,
                durable: b,
                auto_delete: b,
                internal: b,
                nowait: b,
                arguments: t,
            }
        ),
        "exchange.delete" => build!(
            a,
            ExchangeDelete {
                exchange: s,
                if_unused: b,
                nowait: b
            }
        ),
        "exchange.bind" => build!(
            a,
            ExchangeBind {
                destination: s,
                source: s,
                routing_key: s,
                nowait: b,
                arguments: t,
            }
        ),
        "exchange.unbind" => build!(
            a,
            ExchangeUnbind {
                destination: s,
                source: s,
                routing_key: s,
                nowait: b,
                arguments: t,
            }
        ),
        "queue.declare" => build!(
            a,
            QueueDeclare {
                queue: s,
                passive: b,
                durable: b,
                exclusive: b,
                auto_delete: b,
                nowait: b,
                arguments: t,
            }
        ),
        "queue.bind" => build!(
            a,
            QueueBind {
                queue: s,
                exchange: s,
                routing_key: s,
                nowait: b,
                arguments: t
            }
        ),
        "queue.unbind" => build!(
            a,
            QueueUnbind {
                queue: s,
                exchange: s,
                routing_key: s,
                arguments: t
            }
        ),
        "queue.purge" => build!(
            a,
            QueuePurge {
                queue: s,
                nowait: b
            }
        ),
        "queue.delete" => build!(
            a,
            QueueDelete {
                queue: s,
                if_unused: b,
                if_empty: b,
                nowait: b
            }
        ),
        "basic.qos" => build!(
            a,
            BasicQos {
                prefetch_size: n,
                prefetch_count: n,
                global: b
            }
        ),
        "basic.consume" => build!(
            a,
            BasicConsume {
                queue: s,
                consumer_tag: s,
                no_local: b,
                no_ack: b,
                exclusive: b,
                nowait: b,
                arguments: t,
            }
        ),
        "basic.cancel" => build!(
            a,
            BasicCancel {
                consumer_tag: s,
                nowait: b
            }
        ),
        "basic.publish" => build!(
            a,
            BasicPublish {
                exchange: s,
                routing_key: s,
                mandatory: b,
                immediate: b
            }
        ),
        "basic.get" => build!(
            a,
            BasicGet {
                queue: s,
                no_ack: b
            }
        ),
        "basic.ack" => build!(
            a,
            BasicAck {
                delivery_tag: n,
                multiple: b
            }
        ),
        "basic.reject" => build!(
            a,
            BasicReject {
                delivery_tag: n,
                requeue: b
            }
        ),
        "basic.nack" => build!(
            a,
            BasicNack {
                delivery_tag: n,
                multiple: b,
                requeue: b
            }
        ),
        "basic.recover" => build!(a, BasicRecover { requeue: b }),
        "basic.recover-async" => build!(a, BasicRecoverAsync { requeue: b }),
        "confirm.select" => build!(a, ConfirmSelect { nowait: b }),
        "tx.select" => build!(a, TxSelect {}),
        "tx.commit" => build!(a, TxCommit {}),
        "tx.rollback" => build!(a, TxRollback {}),
        other => return Err(format!("unknown method {other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse() {
        let s = parse(
            "scenario a: about\nopen 1\nsend 1 queue.declare queue=q arg:x-max-length=2 # c\n\
             publish 1 routing_key=q body=\"a b\" prop:priority=3 hdr:k=S:v\n",
        )
        .unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].steps.len(), 3);
        assert_eq!(s[0].names, vec![(Kind::Queue, "q".to_owned())]);
        assert!(parse("scenario a\nsend 1 queue.declare qeue=q").is_err());
    }
}
