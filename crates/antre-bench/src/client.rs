//! A deliberately small AMQP 0-9-1 client: just enough to open a connection
//! and a channel, declare things, and then hand the socket to a producer or a
//! consumer loop that batches its own frames.
//!
//! Why not lapin: a general client pays for generality on every message
//! (a task hop per frame, a future per publish, a copy per body), and tops out
//! near 45k msg/s per core, below what a fast broker can take. Here setup is
//! request/response on one socket, and the hot loops in
//! [`crate::producer`] and [`crate::consumer`] own the socket outright.

use antre_amqp::method::*;
use antre_amqp::{decode_frame, encode_method, FieldTable, FieldValue, Frame, Method};
use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The frame size we ask for: large enough that a 1 KiB or 64 KiB body goes
/// in one body frame, as every mainstream client does.
pub const FRAME_MAX: u32 = 131_072;

/// Where and as whom to connect, parsed from `amqp://user:pass@host:port/vhost`.
#[derive(Clone, Debug, PartialEq)]
pub struct AmqpUrl {
    /// Host name or address.
    pub host: String,
    /// TCP port (5672 when the URL has none).
    pub port: u16,
    /// User name (guest by default).
    pub user: String,
    /// Password (guest by default).
    pub password: String,
    /// Virtual host ("/" by default; `%2f` in the URL).
    pub vhost: String,
}

impl std::str::FromStr for AmqpUrl {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let rest = s
            .strip_prefix("amqp://")
            .ok_or_else(|| anyhow!("URL '{s}' must start with amqp:// (amqps is not supported)"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(ui) => match ui.find(':') {
                Some(i) => (percent_decode(&ui[..i])?, percent_decode(&ui[i + 1..])?),
                None => (percent_decode(ui)?, String::new()),
            },
            None => ("guest".to_owned(), "guest".to_owned()),
        };
        let (host, port) = match hostport.rfind(':') {
            Some(i) if !hostport.ends_with(']') => (
                &hostport[..i],
                hostport[i + 1..]
                    .parse()
                    .with_context(|| format!("bad port in URL '{s}'"))?,
            ),
            _ => (hostport, 5672),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = if host.is_empty() { "localhost" } else { host };
        let vhost = match path {
            None | Some("") => "/".to_owned(),
            Some(p) => percent_decode(p)?,
        };
        Ok(AmqpUrl {
            host: host.to_owned(),
            port,
            user,
            password,
            vhost,
        })
    }
}

fn percent_decode(s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| anyhow!("truncated %-escape in '{s}'"))?;
            out.push(
                u8::from_str_radix(hex, 16).with_context(|| format!("bad %-escape in '{s}'"))?,
            );
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).with_context(|| format!("'{s}' is not UTF-8 once decoded"))
}

/// An open AMQP connection during setup, before a hot loop takes it over.
pub struct Connection {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read but not yet parsed.
    pub rbuf: BytesMut,
    /// The frame_max agreed with the server.
    pub frame_max: u32,
}

impl Connection {
    /// Connects, authenticates with PLAIN and opens the URL's virtual host.
    pub async fn open(url: &AmqpUrl, name: &str) -> Result<Connection> {
        Connection::open_with_sndbuf(url, name, None).await
    }

    /// Like [`Connection::open`], with the socket's send buffer capped at
    /// `sndbuf` bytes. Producers use this: on loopback the kernel would
    /// otherwise grow the buffer to megabytes, and a flat-out producer would
    /// count as "published" a million messages the broker has not read yet.
    pub async fn open_with_sndbuf(
        url: &AmqpUrl,
        name: &str,
        sndbuf: Option<u32>,
    ) -> Result<Connection> {
        let addr = tokio::net::lookup_host((url.host.as_str(), url.port))
            .await
            .with_context(|| format!("cannot resolve {}", url.host))?
            .next()
            .ok_or_else(|| anyhow!("{} has no address", url.host))?;
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if let Some(size) = sndbuf {
            socket.set_send_buffer_size(size)?;
        }
        let stream = socket
            .connect(addr)
            .await
            .with_context(|| format!("cannot connect to {}:{}", url.host, url.port))?;
        // Batching is done by us; Nagle would only add latency at low rates.
        stream.set_nodelay(true)?;
        let mut conn = Connection {
            stream,
            rbuf: BytesMut::with_capacity(256 * 1024),
            frame_max: FRAME_MAX,
        };
        conn.stream.write_all(&antre_amqp::PROTOCOL_HEADER).await?;
        match conn.next_method(0).await? {
            Method::ConnectionStart(_) => {}
            m => bail!("expected connection.start, got {}", m.name()),
        }
        let mut caps = FieldTable::new();
        for c in [
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
        ] {
            caps.insert(c, FieldValue::Bool(true));
        }
        let mut props = FieldTable::new();
        props.insert("product", FieldValue::string("antre-bench"));
        props.insert("connection_name", FieldValue::string(name));
        props.insert("capabilities", FieldValue::Table(caps));
        let mut response = Vec::new();
        response.push(0);
        response.extend_from_slice(url.user.as_bytes());
        response.push(0);
        response.extend_from_slice(url.password.as_bytes());
        conn.send(
            0,
            ConnectionStartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: Bytes::from(response),
                locale: "en_US".into(),
            }
            .into(),
        )
        .await?;
        let tune = match conn.next_method(0).await? {
            Method::ConnectionTune(t) => t,
            Method::ConnectionClose(c) => bail!("login refused: {} {}", c.reply_code, c.reply_text),
            m => bail!("expected connection.tune, got {}", m.name()),
        };
        conn.frame_max = match tune.frame_max {
            0 => FRAME_MAX,
            n => n.min(FRAME_MAX),
        };
        conn.send(
            0,
            ConnectionTuneOk {
                channel_max: tune.channel_max,
                frame_max: conn.frame_max,
                // No heartbeats: a benchmark connection is never idle long,
                // and the hot loops need not answer them.
                heartbeat: 0,
            }
            .into(),
        )
        .await?;
        let open = ConnectionOpen {
            virtual_host: url.vhost.clone(),
            ..Default::default()
        };
        match conn.call(0, open.into()).await? {
            Method::ConnectionOpenOk(_) => {}
            m => bail!("expected connection.open-ok, got {}", m.name()),
        }
        Ok(conn)
    }

    /// Sends one method frame.
    pub async fn send(&mut self, channel: u16, method: Method) -> Result<()> {
        let mut out = BytesMut::new();
        encode_method(channel, &method, &mut out);
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// Reads frames until a method arrives on `channel` and returns it;
    /// heartbeats and content frames in between are skipped, and a close
    /// from the server becomes an error carrying its reply text.
    pub async fn next_method(&mut self, channel: u16) -> Result<Method> {
        loop {
            while let Some(frame) = decode_frame(&mut self.rbuf, self.frame_max + 8)? {
                if let Frame::Method {
                    channel: ch,
                    method,
                } = frame
                {
                    match method {
                        Method::ConnectionClose(c) => {
                            let _ = self.send(0, ConnectionCloseOk {}.into()).await;
                            bail!(
                                "server closed the connection: {} {}",
                                c.reply_code,
                                c.reply_text
                            )
                        }
                        Method::ChannelClose(c) if ch == channel => {
                            let _ = self.send(ch, ChannelCloseOk {}.into()).await;
                            bail!(
                                "server closed the channel: {} {}",
                                c.reply_code,
                                c.reply_text
                            )
                        }
                        m if ch == channel => return Ok(m),
                        _ => {}
                    }
                }
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                bail!("server closed the socket");
            }
        }
    }

    /// Sends a synchronous method and waits for its reply.
    pub async fn call(&mut self, channel: u16, method: Method) -> Result<Method> {
        let name = method.name();
        self.send(channel, method).await?;
        self.next_method(channel)
            .await
            .with_context(|| format!("{name} failed"))
    }

    /// Opens channel `channel`.
    pub async fn open_channel(&mut self, channel: u16) -> Result<()> {
        self.call(channel, ChannelOpen::default().into()).await?;
        Ok(())
    }

    /// Declares a queue and returns its (message count, consumer count).
    pub async fn declare_queue(
        &mut self,
        channel: u16,
        queue: &str,
        durable: bool,
        passive: bool,
        queue_type: Option<&str>,
    ) -> Result<(u32, u32)> {
        let mut arguments = FieldTable::default();
        if let Some(t) = queue_type {
            arguments.insert("x-queue-type", FieldValue::string(t));
        }
        let m = QueueDeclare {
            queue: queue.into(),
            durable,
            passive,
            arguments,
            ..Default::default()
        };
        match self.call(channel, m.into()).await? {
            Method::QueueDeclareOk(ok) => Ok((ok.message_count, ok.consumer_count)),
            m => bail!("expected queue.declare-ok, got {}", m.name()),
        }
    }

    /// Closes the connection politely, waiting briefly for close-ok.
    pub async fn close(mut self) {
        let close = ConnectionClose {
            reply_code: 200,
            reply_text: "bye".into(),
            ..Default::default()
        };
        if self.send(0, close.into()).await.is_ok() {
            let wait = async {
                loop {
                    match decode_frame(&mut self.rbuf, self.frame_max + 8) {
                        Ok(Some(Frame::Method {
                            method: Method::ConnectionCloseOk(_),
                            ..
                        })) => return,
                        Ok(Some(_)) => continue,
                        Ok(None) => {}
                        Err(_) => return,
                    }
                    match self.stream.read_buf(&mut self.rbuf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_and_escapes() {
        let u: AmqpUrl = "amqp://localhost".parse().unwrap();
        assert_eq!(
            u,
            AmqpUrl {
                host: "localhost".into(),
                port: 5672,
                user: "guest".into(),
                password: "guest".into(),
                vhost: "/".into()
            }
        );
        let u: AmqpUrl = "amqp://bob:p%40ss@10.0.0.1:5682/%2f".parse().unwrap();
        assert_eq!(
            (
                u.user.as_str(),
                u.password.as_str(),
                u.port,
                u.vhost.as_str()
            ),
            ("bob", "p@ss", 5682, "/")
        );
        let u: AmqpUrl = "amqp://[::1]:1234/prod".parse().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.vhost.as_str()),
            ("::1", 1234, "prod")
        );
        assert!("http://x".parse::<AmqpUrl>().is_err());
    }
}
