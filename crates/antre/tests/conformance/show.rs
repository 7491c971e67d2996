//! How a server method is written into a transcript: its dotted name, then
//! every field as `name=value`, with server-generated names numbered in order
//! of appearance (`amq.gen-1`), since their random part differs per run.

use antre_amqp::{BasicProperties, FieldTable, FieldValue, Method};
use bytes::Bytes;

/// Numbers server-generated names within one scenario.
#[derive(Default)]
pub struct Names {
    seen: Vec<String>,
}

/// Prefixes of names a server makes up; what follows them is random.
const GENERATED: [&str; 3] = ["amq.gen-", "amq.ctag-", "amq.rabbitmq.reply-to."];

impl Names {
    /// Replaces each generated name in `text` by its prefix and a number.
    pub fn normalise(&mut self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        loop {
            let next = GENERATED
                .iter()
                .filter_map(|p| rest.find(p).map(|at| (at, *p)))
                .min();
            let Some((at, prefix)) = next else {
                out.push_str(rest);
                return out;
            };
            out.push_str(&rest[..at]);
            let tail = &rest[at + prefix.len()..];
            let len = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || "-_.=+/".contains(c)))
                .unwrap_or(tail.len());
            let name = &rest[at..at + prefix.len() + len];
            let n = match self.seen.iter().position(|s| s == name) {
                Some(i) => i + 1,
                None => {
                    self.seen.push(name.to_owned());
                    self.seen.len()
                }
            };
            out.push_str(&format!("{prefix}{n}"));
            rest = &tail[len..];
        }
    }
}

trait Show {
    fn show(&self) -> String;
}

impl Show for u8 {
    fn show(&self) -> String {
        self.to_string()
    }
}
impl Show for u16 {
    fn show(&self) -> String {
        self.to_string()
    }
}
impl Show for u32 {
    fn show(&self) -> String {
        self.to_string()
    }
}
impl Show for u64 {
    fn show(&self) -> String {
        self.to_string()
    }
}
impl Show for bool {
    fn show(&self) -> String {
        self.to_string()
    }
}
impl Show for String {
    fn show(&self) -> String {
        format!("{self:?}")
    }
}
impl Show for Bytes {
    fn show(&self) -> String {
        format!("{:?}", String::from_utf8_lossy(self))
    }
}
impl Show for FieldTable {
    fn show(&self) -> String {
        table(self)
    }
}

macro_rules! fields {
    ($name:expr, $m:expr $(, $f:ident)*) => {{
        let mut s = String::from($name);
        $( s.push_str(&format!(" {}={}", stringify!($f), $m.$f.show())); )*
        s
    }};
}

/// One line for a method the server sent (content is appended separately).
pub fn describe(method: &Method, names: &mut Names) -> String {
    let n = method.name();
    let line = match method {
        Method::ConnectionTune(m) => fields!(n, m, channel_max, frame_max, heartbeat),
        Method::ConnectionOpenOk(m) => fields!(n, m, known_hosts),
        Method::ConnectionClose(m) => fields!(n, m, reply_code, reply_text, class_id, method_id),
        Method::ConnectionBlocked(m) => fields!(n, m, reason),
        Method::ConnectionSecure(m) => fields!(n, m, challenge),
        Method::ChannelOpenOk(m) => fields!(n, m, channel_id),
        Method::ChannelFlow(m) => fields!(n, m, active),
        Method::ChannelFlowOk(m) => fields!(n, m, active),
        Method::ChannelClose(m) => fields!(n, m, reply_code, reply_text, class_id, method_id),
        Method::QueueDeclareOk(m) => fields!(n, m, queue, message_count, consumer_count),
        Method::QueuePurgeOk(m) => fields!(n, m, message_count),
        Method::QueueDeleteOk(m) => fields!(n, m, message_count),
        Method::BasicConsumeOk(m) => fields!(n, m, consumer_tag),
        Method::BasicCancel(m) => fields!(n, m, consumer_tag, nowait),
        Method::BasicCancelOk(m) => fields!(n, m, consumer_tag),
        Method::BasicReturn(m) => fields!(n, m, reply_code, reply_text, exchange, routing_key),
        Method::BasicDeliver(m) => fields!(
            n,
            m,
            consumer_tag,
            delivery_tag,
            redelivered,
            exchange,
            routing_key
        ),
        Method::BasicGetOk(m) => fields!(
            n,
            m,
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
            message_count
        ),
        Method::BasicGetEmpty(m) => fields!(n, m, cluster_id),
        Method::BasicAck(m) => fields!(n, m, delivery_tag, multiple),
        Method::BasicNack(m) => fields!(n, m, delivery_tag, multiple, requeue),
        // The rest have no fields, or are client methods a server would not
        // send; their debug form shows anything unexpected in full.
        other if field_less(other) => n.to_owned(),
        other => format!("{n} {other:?}"),
    };
    names.normalise(&line)
}

fn field_less(m: &Method) -> bool {
    matches!(
        m,
        Method::ConnectionCloseOk(_)
            | Method::ConnectionUnblocked(_)
            | Method::ConnectionUpdateSecretOk(_)
            | Method::ChannelCloseOk(_)
            | Method::ExchangeDeclareOk(_)
            | Method::ExchangeDeleteOk(_)
            | Method::ExchangeBindOk(_)
            | Method::ExchangeUnbindOk(_)
            | Method::QueueBindOk(_)
            | Method::QueueUnbindOk(_)
            | Method::BasicQosOk(_)
            | Method::BasicRecoverOk(_)
            | Method::ConfirmSelectOk(_)
            | Method::TxSelectOk(_)
            | Method::TxCommitOk(_)
            | Method::TxRollbackOk(_)
    )
}

/// ` | body="..." props` for a message the server delivered.
pub fn content(p: &BasicProperties, body: &[u8], names: &mut Names) -> String {
    // Long bodies are there to test framing: their size is what matters.
    let mut s = match body.len() {
        0..=64 => format!(" | body={:?}", String::from_utf8_lossy(body)),
        n => format!(" | body=<{n} bytes>"),
    };
    let mut prop = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            s.push_str(&format!(" {k}={v}"));
        }
    };
    prop("content_type", p.content_type.as_ref().map(Show::show));
    prop(
        "content_encoding",
        p.content_encoding.as_ref().map(Show::show),
    );
    prop("headers", p.headers.as_ref().map(table));
    prop("delivery_mode", p.delivery_mode.map(|v| v.show()));
    prop("priority", p.priority.map(|v| v.show()));
    prop("correlation_id", p.correlation_id.as_ref().map(Show::show));
    prop("reply_to", p.reply_to.as_ref().map(Show::show));
    prop("expiration", p.expiration.as_ref().map(Show::show));
    prop("message_id", p.message_id.as_ref().map(Show::show));
    // A timestamp the broker set would differ per run; one the publisher
    // set is in the scenario, so its presence is what matters.
    prop("timestamp", p.timestamp.map(|_| "<set>".to_owned()));
    prop("type", p.kind.as_ref().map(Show::show));
    prop("user_id", p.user_id.as_ref().map(Show::show));
    prop("app_id", p.app_id.as_ref().map(Show::show));
    names.normalise(&s)
}

/// A table with its keys sorted: a table is a map to every client, and
/// brokers order keys as they like.
fn table(t: &FieldTable) -> String {
    let mut entries: Vec<String> = t.iter().map(|(k, v)| format!("{k}:{}", value(v))).collect();
    entries.sort();
    format!("{{{}}}", entries.join(", "))
}

fn value(v: &FieldValue) -> String {
    match v {
        FieldValue::LongString(b) => format!("{:?}", String::from_utf8_lossy(b)),
        FieldValue::Table(t) => table(t),
        FieldValue::Array(items) => {
            let items: Vec<String> = items.iter().map(value).collect();
            format!("[{}]", items.join(", "))
        }
        // Times the broker stamps (x-death's `time`) differ per run.
        FieldValue::Timestamp(_) => "<time>".to_owned(),
        other => match other.as_i64() {
            Some(n) => n.to_string(),
            None => format!("{other:?}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_numbered_in_order() {
        let mut n = Names::default();
        assert_eq!(
            n.normalise("q=\"amq.gen-AbC_d-1\" t=amq.ctag-xyz q2='amq.gen-AbC_d-1'"),
            "q=\"amq.gen-1\" t=amq.ctag-2 q2='amq.gen-1'"
        );
    }
}
