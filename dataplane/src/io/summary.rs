//! The periodic drop summary: per-packet problems are never logged one by one (an attacker
//! sets their rate); instead, every [`SUMMARY_EVERY`], one line per tenant whose drop counters
//! moved, with the increase by reason, and one for the drops of no tenant.

use std::collections::HashMap;
use std::time::Duration;

use crate::engine::{DropReason, Drops, EngineStats};

/// How often the summary is considered (it is logged only when a counter changed).
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// The drop counters at the last summary.
#[derive(Debug, Default)]
pub(crate) struct DropSummary {
    tenants: HashMap<String, Drops>,
    unattributed: Drops,
}

/// `reason=+n ...` for the counters of `now` that grew since `before` (a counter that went
/// down, after a tenant was removed and added again, counts from zero).
pub(crate) fn deltas(before: &Drops, now: &Drops) -> String {
    let mut parts = Vec::new();
    for reason in DropReason::ALL {
        let (b, n) = (before.get(*reason), now.get(*reason));
        let d = if n >= b { n - b } else { n };
        if d > 0 {
            parts.push(format!("{reason}=+{d}"));
        }
    }
    parts.join(" ")
}

impl DropSummary {
    /// The lines to log since the last call: (tenant, deltas), `None` as tenant for drops of no
    /// tenant. Remembers `stats` for the next call.
    pub(crate) fn update(&mut self, stats: &EngineStats) -> Vec<(Option<String>, String)> {
        let mut lines = Vec::new();
        let mut seen = HashMap::with_capacity(stats.tenants.len());
        for t in &stats.tenants {
            let before = self.tenants.get(&t.name).copied().unwrap_or_default();
            let d = deltas(&before, &t.counters.drops);
            if !d.is_empty() {
                lines.push((Some(t.name.clone()), d));
            }
            seen.insert(t.name.clone(), t.counters.drops);
        }
        let d = deltas(&self.unattributed, &stats.unattributed);
        if !d.is_empty() {
            lines.push((None, d));
        }
        self.tenants = seen;
        self.unattributed = stats.unattributed;
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Counters, TenantStats};

    fn stats(acme: &[DropReason], none: &[DropReason]) -> EngineStats {
        let mut d = Drops::default();
        for r in acme {
            d.count(*r);
        }
        let mut u = Drops::default();
        for r in none {
            u.count(*r);
        }
        EngineStats {
            tenants: vec![TenantStats {
                name: "acme".into(),
                public_key: String::new(),
                counters: Counters {
                    drops: d,
                    ..Counters::default()
                },
                connections: 0,
                peers: Vec::new(),
            }],
            unattributed: u,
        }
    }

    #[test]
    fn only_what_changed_is_summarized() {
        use DropReason::*;
        let mut s = DropSummary::default();
        assert!(s.update(&stats(&[], &[])).is_empty());
        let lines = s.update(&stats(
            &[PolicyDenied, PolicyDenied, NoRoute],
            &[UnknownIndex],
        ));
        assert_eq!(
            lines,
            vec![
                (Some("acme".into()), "no_route=+1 policy_denied=+2".into()),
                (None, "unknown_index=+1".into())
            ]
        );
        // Nothing new: nothing to say.
        assert!(
            s.update(&stats(
                &[PolicyDenied, PolicyDenied, NoRoute],
                &[UnknownIndex]
            ))
            .is_empty()
        );
        let lines = s.update(&stats(
            &[PolicyDenied, PolicyDenied, PolicyDenied, NoRoute],
            &[UnknownIndex],
        ));
        assert_eq!(
            lines,
            vec![(Some("acme".into()), "policy_denied=+1".into())]
        );
        // A tenant that was re-created counts from zero.
        let lines = s.update(&stats(&[SpoofedSource], &[UnknownIndex]));
        assert_eq!(
            lines,
            vec![(Some("acme".into()), "spoofed_source=+1".into())]
        );
    }
}
