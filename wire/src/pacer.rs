//! Waiting for an instant precisely: the load generator paces sends with it and the simulator
//! paces engine steps with it.
//!
//! tokio's timer wheel ticks in whole milliseconds and wakes a sleeper up to a tick late, so a
//! plain `sleep_until` makes sends ~1 ms late on average — and every latency measured from the
//! intended time would carry that error. The pacer sleeps until shortly before the deadline and
//! then yields in a loop, re-checking the clock, until the deadline passes. The loop yields to
//! the runtime on every turn, so it delays no other task; it costs one core's time only in the
//! last ~1.5 ms before each send.

use std::time::Duration;

use tokio::time::Instant;

/// How long before the deadline the coarse sleep ends.
const SPIN: Duration = Duration::from_micros(1500);

/// Returns at `deadline` (or just after), within microseconds rather than a timer tick.
pub async fn wait_until(deadline: Instant) {
    if let Some(coarse) = deadline.checked_sub(SPIN)
        && coarse > Instant::now()
    {
        tokio::time::sleep_until(coarse).await;
    }
    // Real time bounds the spin: under a paused test clock `Instant::now()` does not advance
    // while this task runs, so after a few real milliseconds fall back to the timer.
    let real = std::time::Instant::now();
    while Instant::now() < deadline {
        if real.elapsed() > SPIN * 3 {
            tokio::time::sleep_until(deadline).await;
            return;
        }
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn returns_at_the_deadline_under_a_paused_clock() {
        let start = Instant::now();
        wait_until(start + Duration::from_millis(250)).await;
        assert!(Instant::now() >= start + Duration::from_millis(250));
        assert!(Instant::now() < start + Duration::from_millis(252));
    }

    #[tokio::test]
    async fn a_past_deadline_returns_at_once() {
        let before = Instant::now();
        wait_until(before - Duration::from_millis(5)).await;
        assert!(before.elapsed() < Duration::from_millis(5));
    }
}
