//! The clock settings of membership, in one place.
//!
//! The safety argument rests on one inequality, checked by [`Timing::validate`]:
//! a node that loses both the store and a majority of its peers stops serving after
//! `isolation_timeout`, strictly before the coordinator may declare it Down after
//! `detect_timeout`. So when the coordinator downs a node, that node has already stopped
//! being Ready.

use std::time::Duration;

/// Timeouts and intervals of membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How often the membership loop wakes up when nothing happens.
    pub tick: Duration,
    /// How often the coordinator renews its lease.
    pub renew_interval: Duration,
    /// How long a lease lasts without renewal (written into the Lease).
    pub lease_duration: Duration,
    /// How often every node probes every other member.
    pub probe_interval: Duration,
    /// How long one probe may take.
    pub probe_timeout: Duration,
    /// A member silent for this long (and at least [`Timing::min_failures`] probes in a
    /// row) is declared Down by the coordinator.
    pub detect_timeout: Duration,
    /// Failed probes in a row needed, on top of [`Timing::detect_timeout`], to down a member.
    pub min_failures: u32,
    /// A node with neither store contact nor a reachable majority for this long stops
    /// serving. Must be shorter than [`Timing::detect_timeout`].
    pub isolation_timeout: Duration,
    /// How long a Down member stays in the table (so that followers see it) before removal.
    pub down_linger: Duration,
    /// A member that the coordinator has tracked for less than this is not downed just
    /// because the pod watch does not show its pod yet (the watch may lag the join).
    pub discovery_grace: Duration,
    /// A node re-reads the store when it has heard nothing from it for this long.
    pub store_refresh: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(200),
            // One Lease write per 2 s at rest (issue 13: ≤ 0.5 writes/s per cluster);
            // a crashed coordinator is replaced within the 4 s lease plus a tick.
            renew_interval: Duration::from_secs(2),
            lease_duration: Duration::from_secs(4),
            probe_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_millis(450),
            detect_timeout: Duration::from_secs(3),
            min_failures: 3,
            isolation_timeout: Duration::from_secs(2),
            down_linger: Duration::from_secs(1),
            discovery_grace: Duration::from_secs(3),
            store_refresh: Duration::from_millis(1000),
        }
    }
}

/// Settings that would break the safety argument.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimingError {
    /// `isolation_timeout + probe_interval` must stay below `detect_timeout`.
    #[error(
        "isolation timeout ({isolation:?}) plus probe interval must be shorter than the detection timeout ({detect:?}); raise the detection timeout"
    )]
    IsolationNotBeforeDetection {
        /// The isolation timeout.
        isolation: Duration,
        /// The detection timeout.
        detect: Duration,
    },
    /// The lease must outlive several renewals.
    #[error("lease duration ({lease:?}) must be at least twice the renew interval ({renew:?})")]
    LeaseTooShort {
        /// The lease duration.
        lease: Duration,
        /// The renew interval.
        renew: Duration,
    },
}

impl Timing {
    /// How long one call to the store may take before it counts as failed: half a lease.
    pub fn store_timeout(&self) -> Duration {
        self.lease_duration / 2
    }

    /// Checks the inequalities the safety argument needs.
    pub fn validate(&self) -> Result<(), TimingError> {
        if self.isolation_timeout + self.probe_interval > self.detect_timeout {
            return Err(TimingError::IsolationNotBeforeDetection {
                isolation: self.isolation_timeout,
                detect: self.detect_timeout,
            });
        }
        if self.lease_duration < self.renew_interval * 2 {
            return Err(TimingError::LeaseTooShort {
                lease: self.lease_duration,
                renew: self.renew_interval,
            });
        }
        Ok(())
    }

    /// A faster variant for the multi-node tests on loopback: the same inequalities, smaller
    /// numbers (but probe timeouts forgiving enough for a loaded test machine).
    pub fn fast() -> Self {
        Self {
            tick: Duration::from_millis(50),
            renew_interval: Duration::from_millis(250),
            lease_duration: Duration::from_millis(1000),
            probe_interval: Duration::from_millis(100),
            probe_timeout: Duration::from_millis(300),
            detect_timeout: Duration::from_millis(1500),
            min_failures: 3,
            isolation_timeout: Duration::from_millis(1000),
            down_linger: Duration::from_millis(300),
            discovery_grace: Duration::from_millis(1500),
            store_refresh: Duration::from_millis(250),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_fast_are_safe() {
        assert_eq!(Timing::default().validate(), Ok(()));
        assert_eq!(Timing::fast().validate(), Ok(()));
    }

    #[test]
    fn isolation_after_detection_is_refused() {
        let t = Timing {
            isolation_timeout: Duration::from_secs(3),
            ..Timing::default()
        };
        assert!(matches!(
            t.validate(),
            Err(TimingError::IsolationNotBeforeDetection { .. })
        ));
    }
}
