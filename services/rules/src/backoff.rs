//! Retry delays: exponential backoff with full jitter (SPEC §5), so that the retries of
//! many failed deliveries spread out instead of hitting a recovering endpoint together.

use rand::Rng;
use std::time::Duration;

/// The retry schedule of the rules service.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// `initial` is the ceiling of the first delay; it doubles per failure up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
        }
    }

    /// The largest delay after the `failures`-th failed attempt (1 for the first):
    /// `initial * 2^(failures - 1)`, capped at `max` (without overflowing, whatever
    /// `failures` is).
    pub fn ceiling(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(63);
        let factor = 1u64 << doublings;
        let ceiling = u32::try_from(factor)
            .ok()
            .and_then(|f| self.initial.checked_mul(f))
            .unwrap_or(self.max);
        ceiling.min(self.max)
    }

    /// The delay before the next attempt: uniformly random in `[0, ceiling]` (full
    /// jitter), but never shorter than what the endpoint asked for with `Retry-After`,
    /// which itself is honoured only up to `max`, so an endpoint cannot park messages
    /// longer than the operator allows.
    pub fn delay(
        &self,
        failures: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        let ceiling = self.ceiling(failures);
        let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        let jittered = Duration::from_millis(rng.gen_range(0..=ceiling_ms));
        match retry_after {
            Some(asked) => jittered.max(asked.min(self.max)),
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn backoff() -> Backoff {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(300))
    }

    #[test]
    fn ceiling_doubles_from_initial_and_stops_at_max() {
        let b = backoff();
        assert_eq!(b.ceiling(1), Duration::from_secs(1));
        assert_eq!(b.ceiling(2), Duration::from_secs(2));
        assert_eq!(b.ceiling(5), Duration::from_secs(16));
        assert_eq!(b.ceiling(9), Duration::from_secs(256));
        assert_eq!(b.ceiling(10), Duration::from_secs(300));
        // Huge attempt counts neither overflow nor exceed the maximum.
        assert_eq!(b.ceiling(64), Duration::from_secs(300));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(300));
        // Zero is treated like the first failure.
        assert_eq!(b.ceiling(0), Duration::from_secs(1));
    }

    #[test]
    fn delays_stay_within_zero_and_the_ceiling() {
        let b = backoff();
        let mut rng = StdRng::seed_from_u64(7);
        for failures in [1, 2, 3, 8, 20, 1000] {
            let mut seen_below_half = false;
            for _ in 0..200 {
                let d = b.delay(failures, None, &mut rng);
                assert!(d <= b.ceiling(failures), "{d:?} after {failures} failures");
                seen_below_half |= d < b.ceiling(failures) / 2;
            }
            // Full jitter: delays are spread over the whole range, not clustered at the top.
            assert!(seen_below_half, "no short delay after {failures} failures");
        }
    }

    #[test]
    fn retry_after_is_a_floor_capped_at_max() {
        let b = backoff();
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..100 {
            let d = b.delay(1, Some(Duration::from_secs(30)), &mut rng);
            // The first ceiling (1 s) is below what was asked, so the floor wins.
            assert_eq!(d, Duration::from_secs(30));
            let d = b.delay(1, Some(Duration::from_secs(86_400)), &mut rng);
            assert_eq!(d, Duration::from_secs(300));
            let d = b.delay(20, Some(Duration::ZERO), &mut rng);
            assert!(d <= Duration::from_secs(300));
        }
    }

    #[test]
    fn max_below_initial_is_raised_to_initial() {
        let b = Backoff::new(Duration::from_secs(10), Duration::from_secs(1));
        assert_eq!(b.ceiling(1), Duration::from_secs(10));
        assert_eq!(b.ceiling(4), Duration::from_secs(10));
    }
}
