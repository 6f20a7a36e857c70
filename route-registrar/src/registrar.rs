//! The registration loops: one task per route, each on its own schedule.
//!
//! Lifecycle of a route: at start and every `registration_interval`, run the health
//! check (if any) -> healthy: `router.register`; unhealthy: `router.unregister`, at most
//! `unregistration_message_limit` times in a row -> repeat. Between ticks the task also
//! re-announces the route's last known state, without re-running the check:
//! - on `router.start` (a router came up or reconnected), healthy routes only, after a
//!   random jitter below 500 ms so that many registrars do not answer in one burst;
//! - when the bus (re)connects, since anything published while it was away was skipped.
//!
//! On shutdown every task stops (a running health check is killed), then one
//! `router.unregister` per route is published and the bus flushed (unless NATS is
//! unreachable: then there is nobody to tell, and waiting would only delay the exit).

use std::time::Duration;

use bytes::Bytes;
use router::bus::{Bus, BusError, BusState};
use router::protocol::{
    RouterStart, SUBJECT_GREET, SUBJECT_REGISTER, SUBJECT_START, SUBJECT_UNREGISTER,
};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Route, format_duration};
use crate::health_check::{self, Outcome};

/// Upper bound of the delay before answering a `router.start`.
const START_JITTER: Duration = Duration::from_millis(500);
/// How long a publish may wait for room in the client's outgoing queue.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long shutdown waits for the final unregistrations to reach the server.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for an answer to `router.greet`.
const GREET_TIMEOUT: Duration = Duration::from_secs(5);
/// `stale_threshold_in_seconds` is this many registration intervals: a route survives
/// two lost or late registrations before the router prunes it.
const STALE_THRESHOLD_INTERVALS: u32 = 3;

/// Why the registrar could not run.
#[derive(Debug, thiserror::Error)]
pub enum RegistrarError {
    #[error("cannot subscribe to {SUBJECT_START}: {0}")]
    Subscribe(#[source] BusError),
}

/// Something a router told us.
#[derive(Debug, Clone)]
struct RouterEvent {
    start: RouterStart,
    /// An answer to our `router.greet` (learn the interval, no re-registration needed).
    greeting: bool,
}

/// Keeps every route of `config` registered on `bus` until `shutdown` is cancelled, then
/// unregisters them all and flushes the bus.
pub async fn run(
    config: Config,
    bus: Bus,
    shutdown: CancellationToken,
) -> Result<(), RegistrarError> {
    let starts = bus
        .subscribe(SUBJECT_START)
        .await
        .map_err(RegistrarError::Subscribe)?;
    let (events_tx, _) = broadcast::channel(16);
    let mut tasks = JoinSet::new();
    tasks.spawn(forward_router_starts(
        starts,
        events_tx.clone(),
        shutdown.clone(),
    ));
    if config.use_router_register_interval {
        tasks.spawn(greet_routers(
            bus.clone(),
            events_tx.clone(),
            shutdown.clone(),
        ));
    }
    for route in &config.routes {
        let task = RouteTask::new(route.clone(), bus.clone(), &config);
        tasks.spawn(task.run(events_tx.subscribe(), bus.state(), shutdown.clone()));
    }
    tracing::info!(routes = config.routes.len(), "route-registrar started");

    shutdown.cancelled().await;
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            tracing::error!(error = %e, "registrar task failed");
        }
    }
    drop(events_tx);

    if !bus.state().borrow().connected {
        tracing::warn!(
            "NATS is unreachable: cannot unregister; the router drops the routes after their stale threshold"
        );
        return Ok(());
    }
    tracing::info!("unregistering every route");
    for route in &config.routes {
        publish(
            &bus,
            SUBJECT_UNREGISTER,
            payload(&route.message),
            &route.name,
        )
        .await;
    }
    match tokio::time::timeout(FLUSH_TIMEOUT, bus.flush()).await {
        Ok(Ok(())) => tracing::info!("unregistered every route"),
        Ok(Err(e)) => tracing::warn!(error = %e, "flushing the unregistrations failed"),
        Err(_) => tracing::warn!(
            timeout = %format_duration(FLUSH_TIMEOUT),
            "the unregistrations were not flushed in time (is NATS down?)"
        ),
    }
    Ok(())
}

/// Parses `router.start` messages and hands them to every route task.
async fn forward_router_starts(
    mut starts: router::bus::Subscription,
    events: broadcast::Sender<RouterEvent>,
    shutdown: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return,
            message = starts.next() => message,
        };
        let Some(message) = message else {
            tracing::warn!("the {SUBJECT_START} subscription ended");
            return;
        };
        match serde_json::from_slice::<RouterStart>(&message.payload) {
            Ok(start) => {
                tracing::info!(
                    router = %start.id,
                    minimum_register_interval_s = start.minimum_register_interval_in_seconds,
                    "a router started; re-registering healthy routes"
                );
                let _ = events.send(RouterEvent {
                    start,
                    greeting: false,
                });
            }
            Err(e) => tracing::warn!(error = %e, "ignoring an invalid {SUBJECT_START} message"),
        }
    }
}

/// Asks the routers for their register interval once the bus is first connected (only
/// when `use_router_register_interval` is set; later routers announce it themselves).
async fn greet_routers(
    bus: Bus,
    events: broadcast::Sender<RouterEvent>,
    shutdown: CancellationToken,
) {
    let mut state = bus.state();
    let answer = tokio::select! {
        _ = shutdown.cancelled() => return,
        answer = async {
            state.wait_for(|s| s.connected).await.ok()?;
            bus.request(SUBJECT_GREET, Bytes::new(), GREET_TIMEOUT).await.ok()
        } => answer,
    };
    let Some(answer) = answer else {
        tracing::info!("no router answered {SUBJECT_GREET}; waiting for {SUBJECT_START}");
        return;
    };
    match serde_json::from_slice::<RouterStart>(&answer.payload) {
        Ok(start) => {
            let _ = events.send(RouterEvent {
                start,
                greeting: true,
            });
        }
        Err(e) => tracing::warn!(error = %e, "ignoring an invalid {SUBJECT_GREET} answer"),
    }
}

/// One route's registration loop and its state.
struct RouteTask {
    route: Route,
    bus: Bus,
    unregistration_limit: u32,
    adopt_router_interval: bool,
    /// The interval in force: the configured one, or a router's shorter one.
    interval: Duration,
    /// The message as published now (its stale threshold follows `interval`).
    payload: Bytes,
    /// The last health verdict; `None` until the first check has finished.
    healthy: Option<bool>,
    unregisters_in_a_row: u32,
    /// `BusState::connects` when the state was last published: a later connection has
    /// not seen it yet.
    announced_on_connection: u64,
}

impl RouteTask {
    fn new(route: Route, bus: Bus, config: &Config) -> Self {
        // `Config` validation refuses 0; a hand-built one must not make the ticker panic.
        let interval = route.registration_interval.max(Duration::from_millis(1));
        let mut task = RouteTask {
            route,
            bus,
            unregistration_limit: config.unregistration_message_limit,
            adopt_router_interval: config.use_router_register_interval,
            interval,
            payload: Bytes::new(),
            healthy: None,
            unregisters_in_a_row: 0,
            announced_on_connection: 0,
        };
        task.set_interval(interval);
        task
    }

    fn set_interval(&mut self, interval: Duration) {
        self.interval = interval;
        let mut message = self.route.message.clone();
        message.stale_threshold_in_seconds = stale_threshold_seconds(interval);
        self.payload = payload(&message);
    }

    async fn run(
        mut self,
        mut events: broadcast::Receiver<RouterEvent>,
        mut bus_state: watch::Receiver<BusState>,
        shutdown: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut events_open = true;
        let mut state_open = true;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {
                    let healthy = match &self.route.health_check {
                        None => true,
                        Some(check) => {
                            let outcome = tokio::select! {
                                _ = shutdown.cancelled() => return,
                                outcome = health_check::run(check) => outcome,
                            };
                            self.note_health(&outcome);
                            outcome.is_healthy()
                        }
                    };
                    if self.healthy.is_none() && healthy {
                        tracing::info!(
                            route = %self.route.name,
                            interval = %format_duration(self.interval),
                            "registering route"
                        );
                    }
                    self.healthy = Some(healthy);
                    self.announce().await;
                }
                event = events.recv(), if events_open => match event {
                    Ok(event) => {
                        if let Some(interval) = self.adopt(&event.start) {
                            ticker = tokio::time::interval_at(Instant::now() + interval, interval);
                            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
                        }
                        if !event.greeting && self.healthy == Some(true) {
                            let jitter = Duration::from_millis(
                                fastrand::u64(0..START_JITTER.as_millis() as u64),
                            );
                            tokio::select! {
                                _ = shutdown.cancelled() => return,
                                _ = tokio::time::sleep(jitter) => {}
                            }
                            self.announce().await;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => events_open = false,
                },
                changed = bus_state.changed(), if state_open => {
                    if changed.is_err() {
                        state_open = false;
                        continue;
                    }
                    let state = *bus_state.borrow_and_update();
                    if state.connected
                        && state.connects > self.announced_on_connection
                        && self.healthy.is_some()
                    {
                        tracing::debug!(route = %self.route.name, "bus connected; announcing route");
                        self.announce().await;
                    }
                }
            }
        }
    }

    /// Logs a change of health (once, not every interval).
    fn note_health(&self, outcome: &Outcome) {
        let healthy = outcome.is_healthy();
        tracing::debug!(route = %self.route.name, ?outcome, "health check ran");
        if self.healthy == Some(healthy) {
            return;
        }
        let check = self
            .route
            .health_check
            .as_ref()
            .map(|c| c.name.as_str())
            .unwrap_or_default();
        match outcome {
            // The first pass is logged as "registering route" by the caller.
            Outcome::Healthy if self.healthy.is_none() => {}
            Outcome::Healthy => {
                tracing::info!(
                    route = %self.route.name, check,
                    "health check passed again; registering route"
                );
            }
            Outcome::Unhealthy { status, output } => tracing::warn!(
                route = %self.route.name, check, %status, %output,
                "health check failed; unregistering route"
            ),
            Outcome::Failed { reason } => tracing::warn!(
                route = %self.route.name, check, %reason,
                "health check could not run; unregistering route"
            ),
            Outcome::TimedOut => tracing::warn!(
                route = %self.route.name, check,
                timeout = %self.route.health_check.as_ref()
                    .map(|c| format_duration(c.timeout)).unwrap_or_default(),
                "health check timed out and was killed; unregistering route"
            ),
        }
    }

    /// Publishes the route's current state: register if healthy, else unregister while
    /// under the limit. Skipped while the bus is disconnected (it would only queue a
    /// stale message); the reconnect announces the state again.
    async fn announce(&mut self) {
        let Some(healthy) = self.healthy else {
            return;
        };
        if healthy {
            self.unregisters_in_a_row = 0;
        } else if self.unregisters_in_a_row >= self.unregistration_limit {
            return;
        }
        let state = *self.bus.state().borrow();
        if !state.connected {
            tracing::debug!(route = %self.route.name, "bus disconnected; not publishing");
            return;
        }
        self.announced_on_connection = state.connects;
        let subject = if healthy {
            SUBJECT_REGISTER
        } else {
            SUBJECT_UNREGISTER
        };
        if publish(&self.bus, subject, self.payload.clone(), &self.route.name).await && !healthy {
            self.unregisters_in_a_row += 1;
        }
    }

    /// Adopts a router's `minimumRegisterIntervalInSeconds` when configured to and when it
    /// is shorter than the interval in force; returns the new interval.
    fn adopt(&mut self, start: &RouterStart) -> Option<Duration> {
        if !self.adopt_router_interval || start.minimum_register_interval_in_seconds == 0 {
            return None;
        }
        let router_interval = Duration::from_secs(start.minimum_register_interval_in_seconds);
        if router_interval >= self.interval {
            return None;
        }
        tracing::info!(
            route = %self.route.name,
            router = %start.id,
            interval = %format_duration(router_interval),
            "adopting the router's shorter register interval"
        );
        self.set_interval(router_interval);
        Some(router_interval)
    }
}

/// Publishes one message; failures are logged (the bus reconnects by itself) and
/// reported as `false`.
async fn publish(bus: &Bus, subject: &str, payload: Bytes, route: &str) -> bool {
    match tokio::time::timeout(PUBLISH_TIMEOUT, bus.publish(subject, payload)).await {
        Ok(Ok(())) => {
            tracing::debug!(route, subject, "published");
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(route, subject, error = %e, "publish failed");
            false
        }
        Err(_) => {
            tracing::warn!(route, subject, "publish timed out");
            false
        }
    }
}

fn payload(message: &router::protocol::RegistryMessage) -> Bytes {
    // Serialising a struct of strings, integers and string maps cannot fail.
    Bytes::from(serde_json::to_vec(message).unwrap_or_default())
}

/// `stale_threshold_in_seconds` for a route registered every `interval`: three
/// intervals, rounded up to whole seconds, at least 1.
pub fn stale_threshold_seconds(interval: Duration) -> u64 {
    let millis = interval.as_millis() * u128::from(STALE_THRESHOLD_INTERVALS);
    u64::try_from(millis.div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_threshold_is_three_intervals_rounded_up() {
        assert_eq!(stale_threshold_seconds(Duration::from_secs(20)), 60);
        assert_eq!(stale_threshold_seconds(Duration::from_millis(200)), 1);
        assert_eq!(stale_threshold_seconds(Duration::from_millis(1500)), 5);
        assert_eq!(stale_threshold_seconds(Duration::from_nanos(1)), 1);
    }
}
