//! The AMQP handshake: protocol header, start/start-ok with PLAIN or
//! AMQPLAIN login, tune/tune-ok, open. Up to open-ok, nothing but these
//! methods is accepted, within the handshake timeout.

use std::sync::Arc;

use antre_amqp::method::*;
use antre_amqp::{reply, FieldTable, FieldValue, Frame, Method, FRAME_MIN_SIZE, PROTOCOL_HEADER};
use antre_broker::ChannelContext;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::{Connection, Stop};
use crate::config::{ServerIdentity, RABBITMQ_VERSION};
use crate::registry::ConnectionEntry;

impl Connection {
    /// Reads frames until the expected handshake method arrives.
    async fn expect(&mut self, name: &str) -> Result<Method, Stop> {
        loop {
            match self.next_frame().await? {
                Frame::Heartbeat => continue,
                Frame::Method { channel: 0, method } => return Ok(method),
                _ => {
                    return Err(Stop::protocol(
                        reply::COMMAND_INVALID,
                        format!("COMMAND_INVALID - expected {name}"),
                    ))
                }
            }
        }
    }

    pub(super) async fn handshake(&mut self) -> Result<(), Stop> {
        while self.rbuf.len() < 8 {
            self.read_more().await?;
        }
        if self.rbuf[..8] != PROTOCOL_HEADER {
            // The spec: answer with the header we speak, then close.
            self.writer.write_all(&PROTOCOL_HEADER).await?;
            return Err(Stop::Gone);
        }
        let _ = self.rbuf.split_to(8);

        self.send_method(0, &self.start_method().into());
        self.flush().await?;
        let Method::ConnectionStartOk(start_ok) = self.expect("connection.start-ok").await? else {
            return Err(Stop::protocol(
                reply::COMMAND_INVALID,
                "COMMAND_INVALID - expected connection.start-ok",
            ));
        };
        // A refused login is told only to clients that announce
        // authentication_failure_close; RabbitMQ just closes the socket on
        // older ones, which would not expect connection.close here.
        let user = match self.authenticate(&start_ok) {
            Err(Stop::Close {
                code: reply::ACCESS_REFUSED,
                ..
            }) if !client_capability(
                &start_ok.client_properties,
                "authentication_failure_close",
            ) =>
            {
                return Err(Stop::Gone)
            }
            other => other?,
        };
        self.cancel_notify =
            client_capability(&start_ok.client_properties, "consumer_cancel_notify");
        self.blocked_notify = client_capability(&start_ok.client_properties, "connection.blocked");

        self.send_method(
            0,
            &ConnectionTune {
                channel_max: self.config.channel_max,
                frame_max: self.config.frame_max,
                heartbeat: self.config.heartbeat,
            }
            .into(),
        );
        self.flush().await?;
        let Method::ConnectionTuneOk(tune) = self.expect("connection.tune-ok").await? else {
            return Err(Stop::protocol(
                reply::COMMAND_INVALID,
                "COMMAND_INVALID - expected connection.tune-ok",
            ));
        };
        let frame_max = if tune.frame_max == 0 {
            self.config.frame_max
        } else {
            tune.frame_max
        };
        if frame_max < FRAME_MIN_SIZE || frame_max > self.config.frame_max {
            // RabbitMQ refuses a tune-ok out of bounds by closing the socket:
            // the client has not opened the connection, so it is not owed a
            // connection.close.
            tracing::info!(peer = %self.peer, frame_max, "refusing frame_max outside {FRAME_MIN_SIZE}..={}", self.config.frame_max);
            return Err(Stop::Gone);
        }
        self.frame_max = frame_max;
        self.channel_max = match tune.channel_max {
            0 => self.config.channel_max,
            n => n.min(self.config.channel_max),
        };
        self.heartbeat = tune.heartbeat;

        let Method::ConnectionOpen(open) = self.expect("connection.open").await? else {
            return Err(Stop::protocol(
                reply::COMMAND_INVALID,
                "COMMAND_INVALID - expected connection.open",
            ));
        };
        let Some(vhost) = self.broker.vhost(&open.virtual_host) else {
            let (class_id, method_id) = Method::ConnectionOpen(open.clone()).id();
            return Err(Stop::Close {
                code: reply::NOT_ALLOWED,
                text: format!("NOT_ALLOWED - vhost {} not found", open.virtual_host),
                class_id,
                method_id,
            });
        };
        self.ctx = Some(ChannelContext {
            broker: Arc::clone(&self.broker),
            vhost,
            connection: self.id,
            max_message_size: self.config.max_message_size,
            user: user.clone(),
        });
        let entry = Arc::new(ConnectionEntry::new(
            self.id,
            self.peer,
            self.local,
            user,
            open.virtual_host.clone(),
            start_ok.mechanism.clone(),
            start_ok.client_properties.clone(),
            (self.frame_max, self.channel_max, self.heartbeat),
        ));
        self.registry.register(Arc::clone(&entry));
        self.entry = Some(entry);
        self.send_method(0, &ConnectionOpenOk::default().into());
        self.flush().await?;
        tracing::debug!(peer = %self.peer, "connection open");
        Ok(())
    }

    fn start_method(&self) -> ConnectionStart {
        let capabilities: FieldTable = [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "authentication_failure_close",
            "per_consumer_qos",
            "consumer_priorities",
            "direct_reply_to",
        ]
        .into_iter()
        .map(|c| (c, FieldValue::Bool(true)))
        .collect();
        let antre = env!("CARGO_PKG_VERSION");
        let (product, version, information) = match self.config.server_identity {
            ServerIdentity::Antre => (
                "antre",
                antre,
                "antre: an AMQP 0-9-1 message broker".to_owned(),
            ),
            // For clients that choose behaviour from product and version
            // (docs/compatibility.md): the RabbitMQ release antre's replies
            // are checked against, with the truth in `information`.
            ServerIdentity::RabbitMq => (
                "RabbitMQ",
                RABBITMQ_VERSION,
                format!("antre {antre}, an AMQP 0-9-1 message broker, presenting itself as RabbitMQ {RABBITMQ_VERSION}"),
            ),
        };
        let server_properties: FieldTable = [
            ("product", FieldValue::string(product)),
            ("version", FieldValue::string(version)),
            ("platform", FieldValue::string("Rust")),
            ("information", FieldValue::string(information)),
            ("cluster_name", FieldValue::string("antre")),
            ("capabilities", FieldValue::Table(capabilities)),
        ]
        .into_iter()
        .collect();
        ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties,
            mechanisms: Bytes::from_static(b"PLAIN AMQPLAIN"),
            locales: Bytes::from_static(b"en_US"),
        }
    }

    /// Checks the login; returns the user name.
    fn authenticate(&self, start_ok: &ConnectionStartOk) -> Result<String, Stop> {
        let mechanism = start_ok.mechanism.as_str();
        let refused = || {
            Stop::protocol(
                reply::ACCESS_REFUSED,
                format!(
                    "ACCESS_REFUSED - Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                ),
            )
        };
        let (user, password) = match mechanism {
            "PLAIN" => parse_plain(&start_ok.response).ok_or_else(refused)?,
            "AMQPLAIN" => parse_amqplain(&start_ok.response).ok_or_else(refused)?,
            other => {
                // RabbitMQ closes the socket on a mechanism it did not offer,
                // whatever the client's capabilities.
                tracing::warn!(peer = %self.peer, "unsupported authentication mechanism '{other}'");
                return Err(Stop::Gone);
            }
        };
        let loopback = self.peer.ip().to_canonical().is_loopback();
        self.broker
            .authenticate(&user, &password, loopback)
            .map_err(|e| {
                tracing::warn!(peer = %self.peer, "login refused: {e}");
                refused()
            })?;
        Ok(user)
    }
}

fn client_capability(props: &FieldTable, name: &str) -> bool {
    match props.get("capabilities") {
        Some(FieldValue::Table(caps)) => caps
            .get(name)
            .and_then(FieldValue::as_bool)
            .unwrap_or(false),
        _ => false,
    }
}

/// SASL PLAIN: `authzid NUL authcid NUL password`.
fn parse_plain(response: &[u8]) -> Option<(String, String)> {
    let mut parts = response.split(|b| *b == 0);
    let _authzid = parts.next()?;
    let user = std::str::from_utf8(parts.next()?).ok()?;
    let password = std::str::from_utf8(parts.next()?).ok()?;
    Some((user.to_owned(), password.to_owned()))
}

/// AMQPLAIN: a field table without its length prefix, with LOGIN and PASSWORD.
fn parse_amqplain(response: &Bytes) -> Option<(String, String)> {
    let table = FieldTable::decode(response.clone(), 0).ok()?;
    let login = table.get("LOGIN")?.as_str()?.to_owned();
    let password = table.get("PASSWORD")?.as_str()?.to_owned();
    Some((login, password))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn plain_response_parses() {
        assert_eq!(
            parse_plain(b"\0guest\0secret"),
            Some(("guest".into(), "secret".into()))
        );
        assert_eq!(parse_plain(b"guest"), None);
    }

    #[test]
    fn amqplain_response_parses() {
        let table: FieldTable = [
            ("LOGIN", FieldValue::string("u")),
            ("PASSWORD", FieldValue::string("p")),
        ]
        .into_iter()
        .collect();
        let mut raw = BytesMut::new();
        table.encode(&mut raw);
        let without_length = raw.freeze().slice(4..);
        assert_eq!(
            parse_amqplain(&without_length),
            Some(("u".into(), "p".into()))
        );
    }
}
