//! A small blocking client of the management API.

use base64::Engine;
use serde_json::Value;

use super::Remote;

/// Talks to one broker as one user.
#[derive(Debug)]
pub struct Client {
    base: String,
    auth: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client for `remote`'s URL and user.
    pub fn new(remote: &Remote) -> Client {
        let credentials = format!("{}:{}", remote.user, remote.password);
        Client {
            base: remote.url.trim_end_matches('/').to_owned(),
            auth: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            ),
            agent: ureq::AgentBuilder::new()
                .timeout(std::time::Duration::from_secs(30))
                .build(),
        }
    }

    /// GET, failing on any status but 2xx.
    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send("GET", path, None)
    }

    /// GET, returning the status with the body instead of failing on 4xx/5xx
    /// (for health checks).
    pub fn get_status(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        match self.request("GET", path).call() {
            Ok(resp) => Ok((resp.status(), body(resp)?)),
            Err(ureq::Error::Status(code, resp)) => Ok((code, body(resp)?)),
            Err(e) => Err(self.transport(e)),
        }
    }

    /// Any method with an optional JSON body; the answer's JSON (null when
    /// empty). An error status becomes an error with the API's reason.
    pub fn send(&self, method: &str, path: &str, json: Option<Value>) -> anyhow::Result<Value> {
        self.finish(method, path, self.request(method, path), json)
    }

    /// As [`Client::send`] without a body, with one more header.
    pub fn send_with_header(
        &self,
        method: &str,
        path: &str,
        (name, value): (&str, &str),
    ) -> anyhow::Result<Value> {
        let request = self.request(method, path).set(name, value);
        self.finish(method, path, request, None)
    }

    fn finish(
        &self,
        method: &str,
        path: &str,
        request: ureq::Request,
        json: Option<Value>,
    ) -> anyhow::Result<Value> {
        let result = match json {
            Some(v) => request.send_json(v),
            None => request.call(),
        };
        match result {
            Ok(resp) => body(resp),
            Err(ureq::Error::Status(code, resp)) => {
                let detail = body(resp).unwrap_or(Value::Null);
                let reason = detail["reason"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| detail.to_string());
                anyhow::bail!("{method} {path}: HTTP {code}: {reason}")
            }
            Err(e) => Err(self.transport(e)),
        }
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        self.agent
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &self.auth)
    }

    fn transport(&self, e: ureq::Error) -> anyhow::Error {
        anyhow::anyhow!(
            "cannot reach the broker at {} ({e}); is it running, and is --url (ANTRE_URL) right?",
            self.base
        )
    }
}

fn body(resp: ureq::Response) -> anyhow::Result<Value> {
    let text = resp.into_string()?;
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    Ok(serde_json::from_str(&text)?)
}
