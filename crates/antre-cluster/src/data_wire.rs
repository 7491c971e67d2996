//! Frames of the forwarding data link ([`crate::forward`]).
//!
//! Binary, unlike the metadata link's JSON ([`crate::wire`]): these frames
//! carry message bodies at the publish rate, and JSON would spell every
//! byte of a body as a number (or grow it by a third in base64) and cost a
//! parse per byte. Messages travel in the store's record form
//! ([`Message::record`]: exchange, routing key, properties as on the AMQP
//! wire, body), AMQP methods in their frame payload form
//! ([`Method::encode`]), so nothing here invents an encoding of its own
//! beyond the framing:
//!
//! ```text
//! frame   := u32 length-of-rest | u8 kind | fields
//! publish := u8 1 | u64 batch | str vhost | items
//!          | u8 6 | u64 applied | u64 batch | str vhost | items
//!          | u8 8 | u8 has-applied | [u64 applied] | u64 batch | str vhost
//!            | u64 run | sourced-items
//! items   := u32 count | count × (u16 queues | queues × str | bytes record)
//! sourced-items := u32 count
//!            | count × (u16 queues | queues × str | queues × u64 seq | bytes record)
//! call    := u8 3 | u64 ch | u64 req | method
//!          | u8 7 | u64 applied | u64 ch | u64 req | method
//! str     := u32 length | UTF-8        bytes := u32 length | raw
//! outputs := u32 count | count × (bytes method | u8 has-message | [bytes record])
//! ```

use std::sync::Arc;

use antre_amqp::Method;
use antre_broker::channel::Outgoing;
use antre_broker::message::Message;
use antre_broker::remote::{RemotePublish, RemoteResult};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The largest data frame either side accepts: a batch of messages of up
/// to antre's largest message size.
pub const MAX_DATA_FRAME: usize = 1 << 30;

/// One frame of the data link.
#[derive(Debug)]
pub enum DataFrame {
    /// Forwarding node → owner: messages for the owner's queues.
    Publish {
        /// The forwarding node's number for the batch.
        batch: u64,
        /// The vhost.
        vhost: String,
        /// Each message with the owner's queues it was routed to (and,
        /// with `run`, the forwarding node's number for it in each).
        items: Vec<RemotePublish>,
        /// How far the forwarding node had applied the metadata log
        /// ([`crate::state_machine::MetaProgress::seen`]); None from a node
        /// (or to a cluster) without feature flag
        /// `forwarded_publish_metadata_index`.
        applied: Option<u64>,
        /// The forwarding node's run, whose numbers the items carry
        /// ([`antre_broker::replicated::Source`]); None from a node (or to
        /// a cluster) without feature flag
        /// `quorum_queue_forwarded_publish_dedupe`.
        run: Option<u64>,
    },
    /// Forwarding node → owner: open proxy channel `ch` for `user`.
    Open {
        /// The forwarding node's number for the channel.
        ch: u64,
        /// The vhost.
        vhost: String,
        /// The user whose permissions apply.
        user: String,
    },
    /// Forwarding node → owner: run a method on proxy channel `ch`;
    /// `req` 0 wants no answer.
    Call {
        /// The proxy channel.
        ch: u64,
        /// The request number to answer with, 0 for none.
        req: u64,
        /// The method.
        method: Method,
        /// As for [`DataFrame::Publish`]: how far the forwarding node had
        /// applied the metadata, for a queue it may know first.
        applied: Option<u64>,
    },
    /// Forwarding node → owner: close proxy channel `ch`.
    Close {
        /// The proxy channel.
        ch: u64,
    },
    /// Forwarding node → owner: its session took `bytes` of the
    /// deliveries proxy channel `ch` pushed; the owner may push that much
    /// more (see [`crate::forward`], consumer flow control).
    Credit {
        /// The proxy channel.
        ch: u64,
        /// Delivery bytes, as the owner counted them.
        bytes: u64,
    },
    /// Owner → forwarding node: what became of each message of a batch.
    Published {
        /// The batch.
        batch: u64,
        /// One result per message, in order.
        results: Vec<RemoteResult>,
    },
    /// Owner → forwarding node: the answer to a [`DataFrame::Call`].
    Reply {
        /// The request.
        req: u64,
        /// The frames the channel answered with, or the error's reply code
        /// and text.
        result: Result<Vec<Outgoing>, (u16, String)>,
    },
    /// Owner → forwarding node: what proxy channel `ch` sends unasked
    /// (deliveries, a consumer cancelled by its queue).
    Push {
        /// The proxy channel.
        ch: u64,
        /// The frames.
        out: Vec<Outgoing>,
    },
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[error("bad data frame: {0}")]
pub struct DecodeError(pub String);

fn put_str(out: &mut BytesMut, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

fn put_method(out: &mut BytesMut, m: &Method) {
    let at = out.len();
    out.put_u32(0);
    m.encode(out);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_outputs(out: &mut BytesMut, items: &[Outgoing]) {
    out.put_u32(items.len() as u32);
    for item in items {
        match item {
            Outgoing::Method(m) => {
                put_method(out, m);
                out.put_u8(0);
            }
            Outgoing::Content(m, message) => {
                put_method(out, m);
                out.put_u8(1);
                put_bytes(out, message.record());
            }
        }
    }
}

fn result_code(r: RemoteResult) -> u8 {
    match r {
        RemoteResult::Accepted => 0,
        RemoteResult::Rejected => 1,
        RemoteResult::Gone => 2,
        RemoteResult::Failed => 3,
    }
}

impl DataFrame {
    /// The frame, length prefix included.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        out.put_u32(0);
        match self {
            DataFrame::Publish {
                batch,
                vhost,
                items,
                applied,
                run,
            } => {
                match (applied, run) {
                    (None, None) => out.put_u8(1),
                    (Some(index), None) => {
                        out.put_u8(6);
                        out.put_u64(*index);
                    }
                    (applied, Some(_)) => {
                        out.put_u8(8);
                        out.put_u8(u8::from(applied.is_some()));
                        if let Some(index) = applied {
                            out.put_u64(*index);
                        }
                    }
                }
                out.put_u64(*batch);
                put_str(&mut out, vhost);
                if let Some(run) = run {
                    out.put_u64(*run);
                }
                out.put_u32(items.len() as u32);
                for item in items {
                    out.put_u16(item.queues.len() as u16);
                    for q in &item.queues {
                        put_str(&mut out, q);
                    }
                    if run.is_some() {
                        for i in 0..item.queues.len() {
                            out.put_u64(item.seqs.get(i).copied().unwrap_or(0));
                        }
                    }
                    put_bytes(&mut out, item.message.record());
                }
            }
            DataFrame::Open { ch, vhost, user } => {
                out.put_u8(2);
                out.put_u64(*ch);
                put_str(&mut out, vhost);
                put_str(&mut out, user);
            }
            DataFrame::Call {
                ch,
                req,
                method,
                applied,
            } => {
                match applied {
                    None => out.put_u8(3),
                    Some(index) => {
                        out.put_u8(7);
                        out.put_u64(*index);
                    }
                }
                out.put_u64(*ch);
                out.put_u64(*req);
                put_method(&mut out, method);
            }
            DataFrame::Close { ch } => {
                out.put_u8(4);
                out.put_u64(*ch);
            }
            DataFrame::Credit { ch, bytes } => {
                out.put_u8(5);
                out.put_u64(*ch);
                out.put_u64(*bytes);
            }
            DataFrame::Published { batch, results } => {
                out.put_u8(11);
                out.put_u64(*batch);
                out.put_u32(results.len() as u32);
                for r in results {
                    out.put_u8(result_code(*r));
                }
            }
            DataFrame::Reply { req, result } => {
                out.put_u8(12);
                out.put_u64(*req);
                match result {
                    Ok(items) => {
                        out.put_u16(0);
                        put_outputs(&mut out, items);
                    }
                    Err((code, text)) => {
                        out.put_u16(*code);
                        put_str(&mut out, text);
                    }
                }
            }
            DataFrame::Push { ch, out: items } => {
                out.put_u8(13);
                out.put_u64(*ch);
                put_outputs(&mut out, items);
            }
        }
        let len = (out.len() - 4) as u32;
        out[0..4].copy_from_slice(&len.to_be_bytes());
        out.freeze()
    }

    /// Reads a frame's body (after its length prefix).
    pub fn decode(body: Bytes) -> Result<DataFrame, DecodeError> {
        let mut r = Reader(body);
        let kind = r.u8()?;
        Ok(match kind {
            kind @ (1 | 6 | 8) => {
                let applied = match kind {
                    6 => Some(r.u64()?),
                    8 if r.u8()? != 0 => Some(r.u64()?),
                    _ => None,
                };
                let batch = r.u64()?;
                let vhost = r.str()?;
                let run = if kind == 8 { Some(r.u64()?) } else { None };
                let n = r.u32()? as usize;
                let mut items = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    let nq = r.u16()? as usize;
                    let mut queues = Vec::with_capacity(nq);
                    for _ in 0..nq {
                        queues.push(r.str()?);
                    }
                    let mut seqs = Vec::new();
                    if run.is_some() {
                        seqs.reserve(nq);
                        for _ in 0..nq {
                            seqs.push(r.u64()?);
                        }
                    }
                    items.push(RemotePublish {
                        queues,
                        message: r.message()?,
                        seqs,
                    });
                }
                DataFrame::Publish {
                    batch,
                    vhost,
                    items,
                    applied,
                    run,
                }
            }
            2 => DataFrame::Open {
                ch: r.u64()?,
                vhost: r.str()?,
                user: r.str()?,
            },
            kind @ (3 | 7) => {
                let applied = if kind == 7 { Some(r.u64()?) } else { None };
                DataFrame::Call {
                    ch: r.u64()?,
                    req: r.u64()?,
                    method: r.method()?,
                    applied,
                }
            }
            4 => DataFrame::Close { ch: r.u64()? },
            5 => DataFrame::Credit {
                ch: r.u64()?,
                bytes: r.u64()?,
            },
            11 => {
                let batch = r.u64()?;
                let n = r.u32()? as usize;
                let mut results = Vec::with_capacity(n.min(65536));
                for _ in 0..n {
                    results.push(match r.u8()? {
                        0 => RemoteResult::Accepted,
                        1 => RemoteResult::Rejected,
                        2 => RemoteResult::Gone,
                        _ => RemoteResult::Failed,
                    });
                }
                DataFrame::Published { batch, results }
            }
            12 => {
                let req = r.u64()?;
                let code = r.u16()?;
                let result = if code == 0 {
                    Ok(r.outputs()?)
                } else {
                    Err((code, r.str()?))
                };
                DataFrame::Reply { req, result }
            }
            13 => DataFrame::Push {
                ch: r.u64()?,
                out: r.outputs()?,
            },
            k => return Err(DecodeError(format!("unknown kind {k}"))),
        })
    }
}

struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.0.remaining() < n {
            return Err(DecodeError("truncated".into()));
        }
        Ok(())
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }
    fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u32()? as usize;
        self.need(n)?;
        Ok(self.0.split_to(n))
    }
    fn str(&mut self) -> Result<String, DecodeError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|e| DecodeError(e.to_string()))
    }
    fn method(&mut self) -> Result<Method, DecodeError> {
        Method::decode(self.bytes()?).map_err(|e| DecodeError(e.to_string()))
    }
    fn message(&mut self) -> Result<Arc<Message>, DecodeError> {
        let raw = self.bytes()?;
        Message::from_record(&raw)
            .map(Arc::new)
            .map_err(|e| DecodeError(e.to_string()))
    }
    fn outputs(&mut self) -> Result<Vec<Outgoing>, DecodeError> {
        let n = self.u32()? as usize;
        let mut items = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            let method = self.method()?;
            items.push(if self.u8()? == 0 {
                Outgoing::Method(method)
            } else {
                Outgoing::Content(method, self.message()?)
            });
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use antre_amqp::method::{BasicAck, BasicDeliver};
    use antre_amqp::BasicProperties;

    fn round_trip(f: &DataFrame) -> DataFrame {
        let raw = f.encode();
        let len = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
        assert_eq!(len, raw.len() - 4);
        DataFrame::decode(raw.slice(4..)).unwrap()
    }

    #[test]
    fn frames_round_trip() {
        let props = BasicProperties {
            message_id: Some("m1".into()),
            ..Default::default()
        };
        let m = Arc::new(Message::new(
            "x".into(),
            "k".into(),
            props,
            Bytes::from_static(b"body"),
        ));
        // Without the metadata index (kind 1, what an older node reads)
        // and with it (kind 6).
        let item = |queues: &[&str], seqs: Vec<u64>| RemotePublish {
            queues: queues.iter().map(|q| (*q).to_owned()).collect(),
            message: Arc::clone(&m),
            seqs,
        };
        // Without the metadata index (kind 1, what an older node reads),
        // with it (kind 6), and with the forwarding run's numbers, with and
        // without it (kind 8).
        for (applied, run, kind) in [
            (None, None, 1),
            (Some(1 << 33), None, 6),
            (None, Some(77), 8),
            (Some(5), Some(1 << 60), 8),
        ] {
            let seqs = if run.is_some() {
                vec![3, 9]
            } else {
                Vec::new()
            };
            let frame = DataFrame::Publish {
                batch: 7,
                vhost: "/".into(),
                items: vec![item(&["q", "r"], seqs.clone())],
                applied,
                run,
            };
            assert_eq!(frame.encode()[4], kind);
            let DataFrame::Publish {
                batch,
                applied: back,
                run: run_back,
                items,
                ..
            } = round_trip(&frame)
            else {
                panic!("kind")
            };
            assert_eq!((batch, back, run_back), (7, applied, run));
            assert_eq!(items[0].seqs, seqs);
            assert_eq!(items[0].queues, vec!["q".to_string(), "r".to_string()]);
        }
        let DataFrame::Publish { batch, items, .. } = round_trip(&DataFrame::Publish {
            batch: 7,
            vhost: "/".into(),
            items: vec![item(&["a", "b"], Vec::new())],
            applied: None,
            run: None,
        }) else {
            panic!("kind")
        };
        assert_eq!(batch, 7);
        assert!(matches!(
            round_trip(&DataFrame::Credit { ch: 5, bytes: 1 << 40 }),
            DataFrame::Credit { ch: 5, bytes } if bytes == 1 << 40
        ));
        assert_eq!(items[0].queues, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(items[0].message.body, m.body);
        assert_eq!(items[0].message.properties, m.properties);
        let deliver: Method = BasicDeliver {
            consumer_tag: "c".into(),
            delivery_tag: 3,
            redelivered: true,
            exchange: "x".into(),
            routing_key: "k".into(),
        }
        .into();
        for applied in [None, Some(42)] {
            let frame = DataFrame::Call {
                ch: 2,
                req: 9,
                method: deliver.clone(),
                applied,
            };
            assert_eq!(frame.encode()[4], if applied.is_some() { 7 } else { 3 });
            let DataFrame::Call {
                ch: 2,
                req: 9,
                applied: back,
                ..
            } = round_trip(&frame)
            else {
                panic!("kind")
            };
            assert_eq!(back, applied);
        }
        let DataFrame::Push { ch, out } = round_trip(&DataFrame::Push {
            ch: 9,
            out: vec![
                Outgoing::Content(deliver.clone(), m),
                Outgoing::Method(
                    BasicAck {
                        delivery_tag: 1,
                        multiple: false,
                    }
                    .into(),
                ),
            ],
        }) else {
            panic!("kind")
        };
        assert_eq!(ch, 9);
        assert!(matches!(&out[0], Outgoing::Content(d, _) if *d == deliver));
        let DataFrame::Reply { result, .. } = round_trip(&DataFrame::Reply {
            req: 1,
            result: Err((404, "NOT_FOUND - no".into())),
        }) else {
            panic!("kind")
        };
        assert_eq!(result.unwrap_err().0, 404);
        assert!(DataFrame::decode(Bytes::from_static(&[1, 0])).is_err());
    }
}
