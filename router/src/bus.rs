//! The message bus behind one type: a real NATS connection, or an in-process bus with the
//! same subjects, payloads and request/reply semantics (controller-lite's `up`).
//!
//! Both report their connection state on a `watch` channel, so the router can suspend
//! pruning while NATS is away and re-announce itself after every reconnect.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{broadcast, watch};

/// One message as received from the bus.
#[derive(Debug, Clone)]
pub struct BusMessage {
    pub subject: String,
    pub payload: Bytes,
    /// Where a request wants its answer.
    pub reply: Option<String>,
}

/// Connection state as seen by subscribers of [`Bus::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BusState {
    pub connected: bool,
    /// How many times a connection was established (1 after the first connect).
    pub connects: u64,
}

/// Bus failures; callers log them and carry on (the bus reconnects by itself).
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("invalid NATS server address {0:?}: {1}")]
    Address(String, String),
    #[error("NATS connect failed: {0}")]
    Connect(String),
    #[error("NATS publish on {subject} failed: {reason}")]
    Publish { subject: String, reason: String },
    #[error("NATS subscribe to {subject} failed: {reason}")]
    Subscribe { subject: String, reason: String },
    #[error("no answer on {0} in time")]
    Timeout(String),
}

/// A cheap-to-clone handle on the bus.
#[derive(Clone, Debug)]
pub enum Bus {
    Nats {
        client: async_nats::Client,
        state: watch::Receiver<BusState>,
    },
    Local(LocalBus),
}

/// Credentials and servers for a NATS connection.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// `nats://host:port` URLs; credentials go in `user` / `pass` (one pair for all
    /// servers: async-nats does not use credentials embedded in URLs).
    pub urls: Vec<String>,
    pub user: String,
    pub pass: String,
    /// Name shown by the NATS server for this connection.
    pub name: String,
}

impl Bus {
    /// Connects to NATS. Returns at once even if no server is up yet: the client keeps
    /// trying forever in the background, and `state()` says when it is connected.
    pub async fn connect_nats(options: &NatsOptions) -> Result<Bus, BusError> {
        let mut addrs = Vec::with_capacity(options.urls.len());
        for url in &options.urls {
            addrs.push(
                url.parse::<async_nats::ServerAddr>()
                    .map_err(|e| BusError::Address(url.clone(), e.to_string()))?,
            );
        }
        let (state_tx, state_rx) = watch::channel(BusState::default());
        let mut connect = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .ping_interval(Duration::from_secs(20))
            .connection_timeout(Duration::from_secs(2))
            // Back off up to 2 s: quick to come back after a NATS restart, and cheap.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 100).min(2_000))
            })
            .subscription_capacity(131_072)
            .event_callback(move |event| {
                let state_tx = state_tx.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => state_tx.send_modify(|s| {
                            s.connected = true;
                            s.connects += 1;
                        }),
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            state_tx.send_modify(|s| s.connected = false)
                        }
                        other => tracing::debug!(event = %other, "nats event"),
                    }
                }
            });
        if !options.user.is_empty() {
            connect = connect.user_and_password(options.user.clone(), options.pass.clone());
        }
        if !options.name.is_empty() {
            connect = connect.name(&options.name);
        }
        let client = connect
            .connect(addrs)
            .await
            .map_err(|e| BusError::Connect(e.to_string()))?;
        Ok(Bus::Nats {
            client,
            state: state_rx,
        })
    }

    /// A new in-process bus.
    pub fn local() -> Bus {
        Bus::Local(LocalBus::new())
    }

    /// The connection state, updated as it changes.
    pub fn state(&self) -> watch::Receiver<BusState> {
        match self {
            Bus::Nats { state, .. } => state.clone(),
            Bus::Local(local) => local.state.clone(),
        }
    }

    /// Publishes a message.
    pub async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        match self {
            Bus::Nats { client, .. } => {
                client
                    .publish(subject.to_owned(), payload)
                    .await
                    .map_err(|e| BusError::Publish {
                        subject: subject.to_owned(),
                        reason: e.to_string(),
                    })
            }
            Bus::Local(local) => {
                local.send(subject, payload, None);
                Ok(())
            }
        }
    }

    /// Subscribes to a subject; `*` matches one token and `>` the rest, as in NATS.
    pub async fn subscribe(&self, subject: &str) -> Result<Subscription, BusError> {
        match self {
            Bus::Nats { client, .. } => client
                .subscribe(subject.to_owned())
                .await
                .map(|s| Subscription::Nats(Box::new(s)))
                .map_err(|e| BusError::Subscribe {
                    subject: subject.to_owned(),
                    reason: e.to_string(),
                }),
            Bus::Local(local) => Ok(Subscription::Local {
                pattern: subject.to_owned(),
                rx: local.tx.subscribe(),
            }),
        }
    }

    /// Sends a request and waits up to `timeout` for the first answer.
    pub async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<BusMessage, BusError> {
        let inbox = format!("_INBOX.{}", uuid::Uuid::new_v4().simple());
        let mut answers = self.subscribe(&inbox).await?;
        match self {
            Bus::Nats { client, .. } => client
                .publish_with_reply(subject.to_owned(), inbox.clone(), payload)
                .await
                .map_err(|e| BusError::Publish {
                    subject: subject.to_owned(),
                    reason: e.to_string(),
                })?,
            Bus::Local(local) => local.send(subject, payload, Some(inbox)),
        }
        tokio::time::timeout(timeout, answers.next())
            .await
            .ok()
            .flatten()
            .ok_or_else(|| BusError::Timeout(subject.to_owned()))
    }

    /// Waits until everything published so far has been written to the server.
    pub async fn flush(&self) -> Result<(), BusError> {
        match self {
            Bus::Nats { client, .. } => client.flush().await.map_err(|e| BusError::Publish {
                subject: "(flush)".to_owned(),
                reason: e.to_string(),
            }),
            Bus::Local(_) => Ok(()),
        }
    }
}

/// Messages on a subject, in order.
#[derive(Debug)]
pub enum Subscription {
    Nats(Box<async_nats::Subscriber>),
    Local {
        pattern: String,
        rx: broadcast::Receiver<BusMessage>,
    },
}

impl Subscription {
    /// The next message; `None` once the bus is gone.
    pub async fn next(&mut self) -> Option<BusMessage> {
        match self {
            Subscription::Nats(sub) => sub.next().await.map(|m| BusMessage {
                subject: m.subject.to_string(),
                payload: m.payload,
                reply: m.reply.map(|r| r.to_string()),
            }),
            Subscription::Local { pattern, rx } => loop {
                match rx.recv().await {
                    Ok(m) if subject_matches(pattern, &m.subject) => return Some(m),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(dropped = n, "in-process bus subscriber lagged");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            },
        }
    }
}

/// The in-process bus: a broadcast channel every subscriber filters by subject.
#[derive(Clone, Debug)]
pub struct LocalBus {
    tx: broadcast::Sender<BusMessage>,
    state: watch::Receiver<BusState>,
}

impl LocalBus {
    fn new() -> Self {
        let (tx, _) = broadcast::channel(65_536);
        let (_, state) = watch::channel(BusState {
            connected: true,
            connects: 1,
        });
        LocalBus { tx, state }
    }

    fn send(&self, subject: &str, payload: Bytes, reply: Option<String>) {
        // No subscriber is not an error: NATS drops such messages too.
        let _ = self.tx.send(BusMessage {
            subject: subject.to_owned(),
            payload,
            reply,
        });
    }
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new()
    }
}

/// NATS subject matching: `*` is one token, a final `>` is one or more tokens.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut pattern = pattern.split('.');
    let mut subject = subject.split('.');
    loop {
        match (pattern.next(), subject.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(p), Some(s)) if p == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_like_nats() {
        assert!(subject_matches("router.*", "router.register"));
        assert!(!subject_matches("router.*", "router.a.b"));
        assert!(subject_matches("router.>", "router.a.b"));
        assert!(!subject_matches("router.>", "router"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.c"));
    }

    #[tokio::test]
    async fn local_bus_delivers_and_answers_requests() {
        let bus = Bus::local();
        let mut sub = bus.subscribe("router.*").await.unwrap();
        let responder = bus.clone();
        let mut greet = bus.subscribe("router.greet").await.unwrap();
        tokio::spawn(async move {
            let m = greet.next().await.unwrap();
            responder
                .publish(&m.reply.unwrap(), Bytes::from_static(b"hi"))
                .await
                .unwrap();
        });
        bus.publish("router.register", Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(sub.next().await.unwrap().subject, "router.register");
        let answer = bus
            .request("router.greet", Bytes::new(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer.payload, "hi");
        assert!(bus.state().borrow().connected);
    }
}
