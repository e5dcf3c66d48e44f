//! Self-heal: app namespaces that go away and come back.
//!
//! Containers restart, and a restarted container has a new network namespace: the named file
//! (`/var/run/netns/NAME`) is deleted and created again, or a path stops existing. The TUN
//! device the gateway holds keeps the old namespace alive, invisible and useless, so nothing
//! fails on its own: the runtime asks. Once a second it compares each interface's namespace
//! identity ((dev, inode) of the namespace file, a `stat`) with the one the device was created
//! in; a read error on the device counts too. A lost interface is dropped (which frees the old
//! namespace) and re-created, with the same spec, as soon as a namespace answers to the name
//! again. The engine is not told: the endpoint's port and the tenant's sessions stay, and
//! packets for it meanwhile are counted as dropped for want of an interface.
//!
//! This module is the bookkeeping; the runtime does the system calls.

use std::time::{Duration, Instant};

use super::netns::{NetnsId, netns_id, netns_path};

/// How often namespaces are checked.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Longest wait between two attempts to create an interface in a namespace that is there but
/// refuses it (the delay doubles from [`CHECK_EVERY`] up to this).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What a check found out about a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    /// A namespace answers to the name, with this identity.
    Present(NetnsId),
    /// Nothing usable answers to the name; why, for the log.
    Gone(String),
}

/// The identity of the namespace `netns` names now. `nsfs_dev` is the device of namespace
/// files (that of `/proc/self/ns/net`): a file that is left behind without its namespace (a
/// failed `ip netns del`) is on another device and does not count as a namespace.
pub(crate) fn probe(netns: &str, nsfs_dev: Option<u64>) -> Probe {
    match netns_id(netns) {
        Ok(id) if nsfs_dev.is_none_or(|d| d == id.dev) => Probe::Present(id),
        Ok(_) => Probe::Gone(format!(
            "{} is not a network namespace any more",
            netns_path(netns).display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Probe::Gone(format!(
            "the namespace is gone ({} does not exist)",
            netns_path(netns).display()
        )),
        Err(e) => Probe::Gone(format!(
            "the namespace cannot be checked at {}: {e}",
            netns_path(netns).display()
        )),
    }
}

/// The device of namespace files, if this kernel shows one.
pub(crate) fn nsfs_dev() -> Option<u64> {
    netns_id("/proc/self/ns/net").ok().map(|id| id.dev)
}

/// Whether an interface lost with this namespace may be re-created by itself when the name
/// answers again. `/proc/PID/...` names a process, not a namespace: once that process is gone,
/// the PID may be reused by any other process (the host's own namespace, say), so the interface
/// waits for the policy to name the new one.
pub(crate) fn may_return(netns: &str) -> bool {
    let Some(rest) = netns_path(netns)
        .to_str()
        .and_then(|p| p.strip_prefix("/proc/"))
        .map(str::to_owned)
    else {
        return true;
    };
    let first = rest.split('/').next().unwrap_or("");
    !(first == "self" || first == "thread-self" || first.bytes().all(|b| b.is_ascii_digit()))
}

/// One interface's health: what namespace it lives in, whether it is missing and since when,
/// and its counters.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    /// The namespace the device was created in (while up).
    pub(crate) id: Option<NetnsId>,
    /// Missing since then (`None` while up).
    pub(crate) missing_since: Option<Instant>,
    /// Why it is missing, or why the last attempt to create it failed.
    pub(crate) problem: Option<String>,
    /// The namespace identity of the last failed attempt: a new namespace is tried at once.
    tried: Option<NetnsId>,
    next_try: Instant,
    backoff: Duration,
    /// Times the interface was lost (namespace gone or replaced, device failed).
    pub(crate) losses: u64,
    /// Times it was re-created after a loss (or created late, after waiting at start).
    pub(crate) recoveries: u64,
    /// Packets for the endpoint dropped while it had no interface.
    pub(crate) dropped: u64,
}

impl Watch {
    /// An interface that was created, in namespace `id`.
    pub(crate) fn up(id: NetnsId, now: Instant) -> Self {
        Watch {
            id: Some(id),
            missing_since: None,
            problem: None,
            tried: None,
            next_try: now,
            backoff: CHECK_EVERY,
            losses: 0,
            recoveries: 0,
            dropped: 0,
        }
    }

    /// An interface that could not be created (yet): `why`.
    pub(crate) fn missing(why: String, now: Instant) -> Self {
        Watch {
            id: None,
            missing_since: Some(now),
            problem: Some(why),
            tried: None,
            next_try: now,
            backoff: CHECK_EVERY,
            losses: 0,
            recoveries: 0,
            dropped: 0,
        }
    }

    /// Keeps the counters of `old` (an interface re-created with a new spec by a reload).
    pub(crate) fn carry(&mut self, old: &Watch) {
        self.losses += old.losses;
        self.recoveries += old.recoveries;
        self.dropped += old.dropped;
    }

    /// Whether the interface is there.
    pub(crate) fn is_up(&self) -> bool {
        self.missing_since.is_none()
    }

    /// The device was lost: counts it.
    pub(crate) fn lost(&mut self, why: String, now: Instant) {
        self.losses += 1;
        self.id = None;
        self.missing_since = Some(now);
        self.problem = Some(why);
        self.tried = None;
        self.next_try = now;
        self.backoff = CHECK_EVERY;
    }

    /// Whether to try creating the interface now, in the namespace `id` that answers: at once
    /// for a namespace not tried yet, else after the backoff.
    pub(crate) fn due(&self, id: NetnsId, now: Instant) -> bool {
        !self.is_up() && (self.tried != Some(id) || now >= self.next_try)
    }

    /// Creating it in namespace `id` failed: wait longer before the next attempt in the same
    /// namespace. Returns whether the problem is new (worth a log line).
    pub(crate) fn failed(&mut self, id: NetnsId, why: String, now: Instant) -> bool {
        if self.tried == Some(id) {
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        } else {
            self.backoff = CHECK_EVERY;
        }
        self.tried = Some(id);
        self.next_try = now + self.backoff;
        let new = self.problem.as_deref() != Some(why.as_str());
        self.problem = Some(why);
        new
    }

    /// It was created in namespace `id`. Returns how long it was missing.
    pub(crate) fn recovered(&mut self, id: NetnsId, now: Instant) -> Duration {
        let missing = self
            .missing_since
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.recoveries += 1;
        self.id = Some(id);
        self.missing_since = None;
        self.problem = None;
        self.tried = None;
        self.backoff = CHECK_EVERY;
        missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ino: u64) -> NetnsId {
        NetnsId { dev: 4, ino }
    }

    #[test]
    fn lose_retry_with_backoff_and_recover() {
        let t0 = Instant::now();
        let mut w = Watch::up(id(1), t0);
        assert!(w.is_up() && !w.due(id(2), t0));
        w.lost("gone".into(), t0);
        assert_eq!((w.losses, w.is_up()), (1, false));
        assert!(w.due(id(2), t0));
        assert!(w.failed(id(2), "busy".into(), t0));
        // Same namespace: wait 1 s, then 2 s, 4 s ...; a new namespace: at once.
        assert!(!w.due(id(2), t0 + Duration::from_millis(500)));
        assert!(w.due(id(3), t0 + Duration::from_millis(500)));
        assert!(w.due(id(2), t0 + CHECK_EVERY));
        assert!(!w.failed(id(2), "busy".into(), t0 + CHECK_EVERY));
        assert!(!w.due(id(2), t0 + Duration::from_secs(2)));
        assert!(w.due(id(2), t0 + Duration::from_secs(3)));
        for _ in 0..10 {
            w.failed(id(2), "busy".into(), t0);
        }
        assert_eq!(w.backoff, MAX_BACKOFF);
        let missing = w.recovered(id(3), t0 + Duration::from_secs(7));
        assert_eq!(missing, Duration::from_secs(7));
        assert_eq!((w.losses, w.recoveries, w.is_up()), (1, 1, true));
        assert_eq!((w.id, w.problem.clone()), (Some(id(3)), None));
    }

    #[test]
    fn waiting_at_start_is_not_a_loss() {
        let t0 = Instant::now();
        let mut w = Watch::missing("no namespace".into(), t0);
        assert!(w.due(id(9), t0));
        w.recovered(id(9), t0);
        assert_eq!((w.losses, w.recoveries), (0, 1));
    }

    #[test]
    fn process_paths_do_not_come_back() {
        assert!(may_return("acme-app"));
        assert!(may_return("/run/docker/netns/0123abcd"));
        assert!(!may_return("/proc/4242/ns/net"));
        assert!(!may_return("/proc/self/ns/net"));
        assert!(may_return("/procfoo/1/ns/net"));
    }

    #[test]
    fn probe_missing_and_present() {
        match probe("/nonexistent/corridor-test-ns", nsfs_dev()) {
            Probe::Gone(why) => assert!(why.contains("does not exist"), "{why}"),
            p => panic!("{p:?}"),
        }
        // Our own namespace is a namespace; a plain file is not one.
        assert!(matches!(
            probe("/proc/self/ns/net", nsfs_dev()),
            Probe::Present(_)
        ));
        if nsfs_dev().is_some() {
            assert!(matches!(
                probe("/proc/self/status", nsfs_dev()),
                Probe::Gone(_)
            ));
        }
    }
}
