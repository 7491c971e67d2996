//! The AMQP handshake: protocol header, start/start-ok with PLAIN,
//! AMQPLAIN or EXTERNAL login, tune/tune-ok, open. Until open-ok nothing
//! but these methods (and heartbeats) is accepted; the server bounds how
//! long it may take.

use std::sync::Arc;

use antre_amqp::method::*;
use antre_amqp::{
    decode_frame, encode_method, reply, FieldTable, FieldValue, Frame, Method, FRAME_MIN_SIZE,
    PROTOCOL_HEADER,
};
use bytes::{Bytes, BytesMut};

use super::frames::ConnectionError;
use super::{Effect, ExternalIdentity, OpenedConnection, Session, SessionState};
use crate::access::LimitRefusal;
use crate::channel::ChannelContext;

/// The handshake method the session waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    ProtocolHeader,
    StartOk,
    TuneOk,
    Open,
}

impl Step {
    fn expected(self) -> &'static str {
        match self {
            Step::ProtocolHeader => "the protocol header",
            Step::StartOk => "connection.start-ok",
            Step::TuneOk => "connection.tune-ok",
            Step::Open => "connection.open",
        }
    }
}

/// How the server presents itself in connection.start's server properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerIdentity {
    /// `product`.
    pub product: String,
    /// `version`.
    pub version: String,
    /// `information`.
    pub information: String,
    /// `cluster_name`.
    pub cluster_name: String,
}

impl Default for ServerIdentity {
    fn default() -> Self {
        ServerIdentity {
            product: "antre".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            information: "antre: an AMQP 0-9-1 message broker".into(),
            cluster_name: "antre".into(),
        }
    }
}

/// The extensions antre supports, as RabbitMQ names them for clients.
const CAPABILITIES: [&str; 9] = [
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "connection.blocked",
    "authentication_failure_close",
    "per_consumer_qos",
    "consumer_priorities",
    "direct_reply_to",
];

/// The SASL mechanisms offered on a connection where EXTERNAL does not
/// apply. (RabbitMQ 3.10 lists the same two in its registry's order,
/// `AMQPLAIN PLAIN`; clients pick by their own preference, not the order.)
const MECHANISMS: &str = "PLAIN AMQPLAIN";
/// Where a verified client certificate may log in: EXTERNAL last, as
/// RabbitMQ with rabbitmq_auth_mechanism_ssl lists it.
const MECHANISMS_WITH_EXTERNAL: &str = "PLAIN AMQPLAIN EXTERNAL";

/// connection.start's server properties.
pub fn server_properties(identity: &ServerIdentity) -> FieldTable {
    let capabilities: FieldTable = CAPABILITIES
        .into_iter()
        .map(|c| (c, FieldValue::Bool(true)))
        .collect();
    [
        ("product", FieldValue::string(identity.product.clone())),
        ("version", FieldValue::string(identity.version.clone())),
        ("platform", FieldValue::string("Rust")),
        (
            "information",
            FieldValue::string(identity.information.clone()),
        ),
        (
            "cluster_name",
            FieldValue::string(identity.cluster_name.clone()),
        ),
        ("capabilities", FieldValue::Table(capabilities)),
    ]
    .into_iter()
    .collect()
}

impl Session {
    /// Takes the next handshake step if its bytes are complete; returns
    /// whether it did.
    pub(super) fn handshake_step(&mut self, input: &mut BytesMut) -> bool {
        if self.handshake == Step::ProtocolHeader {
            if input.len() < PROTOCOL_HEADER.len() {
                return false;
            }
            if input[..PROTOCOL_HEADER.len()] != PROTOCOL_HEADER {
                // The spec: answer with the header we speak, then close.
                input.clear();
                self.wbuf.extend_from_slice(&PROTOCOL_HEADER);
                self.state = SessionState::Closed { linger: false };
                return false;
            }
            let _ = input.split_to(PROTOCOL_HEADER.len());
            let start = ConnectionStart {
                version_major: 0,
                version_minor: 9,
                server_properties: server_properties(&self.config.identity),
                mechanisms: Bytes::from_static(self.mechanisms().as_bytes()),
                locales: Bytes::from_static(b"en_US"),
            };
            encode_method(0, &start.into(), &mut self.wbuf);
            self.handshake = Step::StartOk;
            return true;
        }
        let method = match decode_frame(input, self.frame_max) {
            Ok(None) => return false,
            Ok(Some(Frame::Heartbeat)) => return true,
            Ok(Some(Frame::Method { channel: 0, method })) => method,
            Ok(Some(_)) => {
                let e = self.unexpected();
                self.close_with(e.code, e.text, e.ids);
                return false;
            }
            Err(e) => {
                let e = ConnectionError::from(e);
                self.close_with(e.code, e.text, e.ids);
                return false;
            }
        };
        let result = match (self.handshake, method) {
            (Step::StartOk, Method::ConnectionStartOk(m)) => self.start_ok(m),
            (Step::TuneOk, Method::ConnectionTuneOk(m)) => self.tune_ok(m),
            (Step::Open, Method::ConnectionOpen(m)) => self.open(m),
            _ => Err(self.unexpected()),
        };
        if let Err(e) = result {
            self.close_with(e.code, e.text, e.ids);
            return false;
        }
        true
    }

    fn unexpected(&self) -> ConnectionError {
        let expected = self.handshake.expected();
        ConnectionError::new(
            reply::COMMAND_INVALID,
            format!("COMMAND_INVALID - expected {expected}"),
        )
    }

    fn start_ok(&mut self, m: ConnectionStartOk) -> Result<(), ConnectionError> {
        let login = self.authenticate(&m);
        self.broker.metrics.auth_amqp.record(login.is_ok());
        let user = match login {
            // A refused login is told only to clients that announce
            // authentication_failure_close; RabbitMQ just closes the socket
            // on older ones, which would not expect connection.close here.
            Err(e)
                if e.code == reply::ACCESS_REFUSED
                    && !client_capability(&m.client_properties, "authentication_failure_close") =>
            {
                return Err(ConnectionError::silent())
            }
            other => other?,
        };
        self.cancel_notify = client_capability(&m.client_properties, "consumer_cancel_notify");
        self.blocked_notify = client_capability(&m.client_properties, "connection.blocked");
        self.opened = Some(OpenedConnection {
            user,
            vhost: String::new(),
            mechanism: m.mechanism,
            client_properties: m.client_properties,
            frame_max: 0,
            channel_max: 0,
            heartbeat: 0,
        });
        let tune = ConnectionTune {
            channel_max: self.config.channel_max,
            frame_max: self.config.frame_max,
            heartbeat: self.config.heartbeat,
        };
        encode_method(0, &tune.into(), &mut self.wbuf);
        self.handshake = Step::TuneOk;
        Ok(())
    }

    fn tune_ok(&mut self, tune: ConnectionTuneOk) -> Result<(), ConnectionError> {
        let frame_max = match tune.frame_max {
            0 => self.config.frame_max,
            n => n,
        };
        if !(FRAME_MIN_SIZE..=self.config.frame_max).contains(&frame_max) {
            // RabbitMQ refuses a tune-ok out of bounds by closing the
            // socket: the client has not opened the connection, so it is
            // not owed a connection.close.
            tracing::info!(
                peer = self.peer.label,
                frame_max,
                "refusing frame_max outside {FRAME_MIN_SIZE}..={}",
                self.config.frame_max
            );
            return Err(ConnectionError::silent());
        }
        self.frame_max = frame_max;
        self.channel_max = match tune.channel_max {
            0 => self.config.channel_max,
            n => n.min(self.config.channel_max),
        };
        self.heartbeat = tune.heartbeat;
        self.handshake = Step::Open;
        Ok(())
    }

    fn open(&mut self, open: ConnectionOpen) -> Result<(), ConnectionError> {
        let Some(vhost) = self.broker.vhost(&open.virtual_host) else {
            let text = format!("NOT_ALLOWED - vhost {} not found", open.virtual_host);
            let method = Method::ConnectionOpen(open);
            return Err(ConnectionError::on(reply::NOT_ALLOWED, text, &method));
        };
        let user = self.opened.as_ref().map_or("", |o| o.user.as_str());
        let access = self.broker.access();
        let permit = access
            .admit_connection(user, &open.virtual_host, self.config.max_connections)
            .map_err(|refusal| {
                let text = refused_text(refusal, user, &open.virtual_host);
                ConnectionError::on(
                    reply::NOT_ALLOWED,
                    text,
                    &Method::ConnectionOpen(open.clone()),
                )
            })?;
        if !access.vhost_access(user, &open.virtual_host) {
            return Err(ConnectionError::new(
                reply::NOT_ALLOWED,
                format!(
                    "NOT_ALLOWED - access to vhost '{}' refused for user '{user}'",
                    open.virtual_host
                ),
            ));
        }
        self.permit = Some(permit);
        self.ctx = Some(ChannelContext {
            broker: Arc::clone(&self.broker),
            vhost,
            connection: self.id,
            user: user.into(),
            max_message_size: self.config.max_message_size,
        });
        if let Some(mut opened) = self.opened.take() {
            opened.vhost = open.virtual_host;
            opened.frame_max = self.frame_max;
            opened.channel_max = self.channel_max;
            opened.heartbeat = self.heartbeat;
            self.effects.push_back(Effect::Opened(opened));
        }
        encode_method(0, &ConnectionOpenOk::default().into(), &mut self.wbuf);
        self.state = SessionState::Open;
        tracing::debug!(peer = self.peer.label, "connection open");
        Ok(())
    }

    fn mechanisms(&self) -> &'static str {
        match self.peer.external {
            ExternalIdentity::Unavailable => MECHANISMS,
            _ => MECHANISMS_WITH_EXTERNAL,
        }
    }

    /// Checks the login; returns the user name.
    fn authenticate(&self, start_ok: &ConnectionStartOk) -> Result<String, ConnectionError> {
        let mechanism = start_ok.mechanism.as_str();
        let refused = || {
            ConnectionError::new(
                reply::ACCESS_REFUSED,
                format!(
                    "ACCESS_REFUSED - Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                ),
            )
        };
        let refuse = |why: &dyn std::fmt::Display| {
            tracing::warn!(peer = self.peer.label, "login refused: {why}");
            refused()
        };
        if !self.mechanisms().split(' ').any(|m| m == mechanism) {
            // RabbitMQ 3.10 closes the socket on a mechanism it did not
            // offer, whatever the client's capabilities (recorded in the
            // conformance suite: login-unknown-mechanism).
            tracing::warn!(
                peer = self.peer.label,
                "refusing authentication mechanism '{mechanism}', which was not offered"
            );
            return Err(ConnectionError::silent());
        }
        if mechanism == "EXTERNAL" {
            let user = match &self.peer.external {
                ExternalIdentity::Certificate {
                    common_name: Some(name),
                } => name.clone(),
                ExternalIdentity::Certificate { common_name: None } => {
                    return Err(refuse(
                        &"the client certificate's subject has no common name",
                    ))
                }
                _ => {
                    return Err(refuse(
                        &"connection peer presented no TLS (x.509) certificate",
                    ))
                }
            };
            self.broker
                .authenticate_external(&user, self.peer.loopback)
                .map_err(|e| refuse(&e))?;
            return Ok(user);
        }
        let (user, password) = match mechanism {
            "PLAIN" => parse_plain(&start_ok.response).ok_or_else(refused)?,
            _ => parse_amqplain(&start_ok.response).ok_or_else(refused)?,
        };
        self.broker
            .authenticate(&user, &password, self.peer.loopback)
            .map_err(|e| refuse(&e))?;
        Ok(user)
    }
}

/// RabbitMQ's texts for a connection.open refused by a limit.
fn refused_text(refusal: LimitRefusal, user: &str, vhost: &str) -> String {
    match refusal {
        LimitRefusal::NodeConnections(limit) => {
            format!("NOT_ALLOWED - connection refused: node connection limit ({limit}) is reached")
        }
        LimitRefusal::VhostConnections(limit) => format!(
            "NOT_ALLOWED - access to vhost '{vhost}' refused for user '{user}': connection limit ({limit}) is reached"
        ),
        LimitRefusal::UserConnections(limit) | LimitRefusal::UserChannels(limit) => format!(
            "NOT_ALLOWED - connection refused for user '{user}': user connection limit ({limit}) is reached"
        ),
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
