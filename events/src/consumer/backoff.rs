//! Delays between attempts: exponential, capped, with jitter so that retries spread out.

use std::time::Duration;

/// How long to wait before each retry: `initial`, doubling per attempt up to `max`, and with
/// jitter (the default) a random point in the upper half of that delay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: bool,
}

impl Default for Backoff {
    /// 200 ms, doubling up to 30 s, with jitter.
    fn default() -> Self {
        Self::exponential(Duration::from_millis(200), Duration::from_secs(30))
    }
}

impl Backoff {
    /// Starts at `initial` and doubles per attempt up to `max`, with jitter.
    pub fn exponential(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            jitter: true,
        }
    }

    /// The same delays every time, without jitter.
    #[must_use]
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// The longest delay it ever gives.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The delay after failed attempt `attempt` (1 for the first).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32
            .checked_pow(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        let delay = self.initial.saturating_mul(factor).min(self.max);
        if !self.jitter {
            return delay;
        }
        let half = delay / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1))
            .without_jitter();
        let delays: Vec<u128> = (1..=6)
            .map(|attempt| backoff.delay(attempt).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..200).map(|_| backoff.delay(3)).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_millis(200) && *d <= Duration::from_millis(400))
        );
        assert!(
            delays.iter().any(|d| *d != delays[0]),
            "jitter varies the delay"
        );
    }
}
