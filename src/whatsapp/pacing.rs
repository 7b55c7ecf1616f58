//! Send pacing in front of the WhatsApp providers, in-process (a limiter shared across replicas
//! would live in Redis).
//!
//! - Per business number, Meta's throughput limit is a rate: at most `limit` messages in any
//!   one-second window (80 by default). The pacer grants exactly that, so a handful of sends at
//!   the same moment (four handoffs' templates, replies to several customers) leave together,
//!   and only a flood is spread out. Spacing every send `1/limit` apart, as the first pacer
//!   did, made the fourth of four simultaneous handoffs wait 37.5 ms for no limit's sake.
//! - Per recipient, Meta's pair limit is a minimum gap between messages to one customer.
//!
//! A send first waits out its recipient's gap and only then takes its place in the number's
//! window, so the window records when the message really leaves, and a customer's gap never
//! holds back messages to other customers.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Meta counts a number's throughput per second.
const WINDOW: Duration = Duration::from_secs(1);
/// Keys kept before idle ones are dropped (each is a number or a recipient).
const MAX_KEYS: usize = 100_000;

#[derive(Default)]
pub(super) struct Pacer {
    /// Per business number: the last grants (at most `limit`, none a window old), oldest first.
    numbers: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// Per recipient: when the next message may go.
    recipients: Mutex<HashMap<String, Instant>>,
}

impl Pacer {
    /// Waits until one message from `number` to `recipient` may leave: no earlier than `gap`
    /// after the recipient's last message, and with fewer than `per_second` messages from the
    /// number in the second before it. Returns whether it had to wait.
    ///
    /// Each wait is exported as `handoff_whatsapp_send_wait_seconds{limit}` (`recipient` or
    /// `number`, zero when there was none): a growing `number` tail means the business number's
    /// throughput is what customers wait for.
    pub(super) async fn wait_turn(
        &self,
        number: &str,
        per_second: u32,
        recipient: &str,
        gap: Duration,
    ) -> bool {
        let recipient_slot = self.reserve_recipient(recipient, gap);
        let recipient_wait = wait_until(recipient_slot).await;
        let number_slot = self.reserve_number(number, per_second);
        if number_slot > Instant::now() {
            // Held back by the number: the recipient's next gap starts from this send.
            self.push_recipient(recipient, number_slot + gap);
        }
        let number_wait = wait_until(number_slot).await;
        metrics::histogram!("handoff_whatsapp_send_wait_seconds", "limit" => "recipient")
            .record(recipient_wait.as_secs_f64());
        metrics::histogram!("handoff_whatsapp_send_wait_seconds", "limit" => "number")
            .record(number_wait.as_secs_f64());
        !recipient_wait.is_zero() || !number_wait.is_zero()
    }

    fn reserve_recipient(&self, recipient: &str, gap: Duration) -> Instant {
        let now = Instant::now();
        let mut next = self.recipients.lock().unwrap_or_else(|p| p.into_inner());
        if next.len() > MAX_KEYS {
            next.retain(|_, at| *at > now);
        }
        let slot = next.get(recipient).copied().filter(|at| *at > now);
        let slot = slot.unwrap_or(now);
        next.insert(recipient.to_owned(), slot + gap);
        slot
    }

    fn push_recipient(&self, recipient: &str, not_before: Instant) {
        let mut next = self.recipients.lock().unwrap_or_else(|p| p.into_inner());
        let at = next.entry(recipient.to_owned()).or_insert(not_before);
        *at = (*at).max(not_before);
    }

    fn reserve_number(&self, number: &str, per_second: u32) -> Instant {
        let now = Instant::now();
        let mut numbers = self.numbers.lock().unwrap_or_else(|p| p.into_inner());
        if numbers.len() > MAX_KEYS {
            numbers.retain(|_, granted| granted.back().is_some_and(|at| *at + WINDOW > now));
        }
        let granted = numbers.entry(number.to_owned()).or_default();
        window_slot(granted, per_second.max(1) as usize, now)
    }
}

/// Sleeps until `slot` if it is ahead; how long that was.
async fn wait_until(slot: Instant) -> Duration {
    let wait = slot.saturating_duration_since(Instant::now());
    if !wait.is_zero() {
        tokio::time::sleep_until(slot).await;
    }
    wait
}

/// The earliest moment from `now` on (and not before an earlier grant, so sends keep their
/// order) with fewer than `limit` grants in the window before it; recorded in `granted`.
fn window_slot(granted: &mut VecDeque<Instant>, limit: usize, now: Instant) -> Instant {
    while granted.front().is_some_and(|at| *at + WINDOW <= now) {
        granted.pop_front();
    }
    let mut slot = now.max(granted.back().copied().unwrap_or(now));
    if granted.len() >= limit {
        // The limit-th most recent grant must have left the window.
        slot = slot.max(granted[granted.len() - limit] + WINDOW);
    }
    granted.push_back(slot);
    // Only the last `limit` grants can hold a later one back.
    while granted.len() > limit {
        granted.pop_front();
    }
    slot
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_number_sends_its_rate_at_once_then_waits_for_the_window() {
        let pacer = Pacer::default();
        let t0 = Instant::now();
        let slots: Vec<Instant> = (0..200).map(|_| pacer.reserve_number("n1", 80)).collect();
        assert!(
            slots[..80].iter().all(|s| *s == t0),
            "80 per second leave at once"
        );
        assert!(slots[80..160].iter().all(|s| *s == t0 + WINDOW));
        assert!(slots[160..].iter().all(|s| *s == t0 + 2 * WINDOW));
        for (i, s) in slots.iter().enumerate() {
            let in_window = slots
                .iter()
                .filter(|t| **t <= *s && **t + WINDOW > *s)
                .count();
            assert!(
                in_window <= 80,
                "slot {i}: {in_window} sends in the second before it"
            );
        }
        // Another number has its own window.
        assert_eq!(pacer.reserve_number("n2", 80), t0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides_and_grants_keep_their_order() {
        let pacer = Pacer::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(pacer.reserve_number("n", 3), t0);
        }
        tokio::time::advance(Duration::from_millis(400)).await;
        // Full: the fourth waits until the first grant is a second old.
        assert_eq!(pacer.reserve_number("n", 3), t0 + WINDOW);
        tokio::time::advance(Duration::from_millis(700)).await;
        // At t0 + 1.1 s the window holds only the grant for t0 + 1 s, but a new grant does not
        // jump ahead of it.
        let now = Instant::now();
        assert_eq!(pacer.reserve_number("n", 3), now);
        assert_eq!(pacer.reserve_number("n", 3), now);
        assert_eq!(pacer.reserve_number("n", 3), t0 + 2 * WINDOW);
    }

    #[tokio::test(start_paused = true)]
    async fn a_recipients_gap_holds_back_only_that_recipient_and_counts_when_it_leaves() {
        let pacer = Arc::new(Pacer::default());
        let t0 = Instant::now();
        let gap = Duration::from_secs(2);
        let send = |recipient: &'static str| {
            let pacer = pacer.clone();
            tokio::spawn(async move {
                pacer.wait_turn("n", 2, recipient, gap).await;
                Instant::now()
            })
        };
        assert!(
            !pacer.wait_turn("n", 2, "alice", gap).await,
            "the first goes at once"
        );
        let alice_again = send("alice");
        tokio::task::yield_now().await;
        let bob = send("bob");
        tokio::task::yield_now().await;
        let carol = send("carol");
        // Bob is not held back by Alice's gap; the number's window (2 per second) is full with
        // Alice's first and Bob's, so Carol waits a second; Alice's second message leaves after
        // her gap, and the window counts it then.
        assert_eq!(bob.await.unwrap(), t0);
        assert_eq!(carol.await.unwrap(), t0 + WINDOW);
        assert_eq!(alice_again.await.unwrap(), t0 + gap);
        assert_eq!(pacer.reserve_number("n", 2), t0 + gap);
        assert_eq!(pacer.reserve_number("n", 2), t0 + gap + WINDOW);
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_held_by_its_number_starts_its_recipients_next_gap_from_when_it_leaves() {
        let pacer = Pacer::default();
        let t0 = Instant::now();
        let gap = Duration::from_millis(500);
        pacer.reserve_number("n", 1);
        // Held 1 s by the number, so Dana's next message may go 0.5 s after that, not at t0 + 0.5 s.
        assert!(pacer.wait_turn("n", 1, "dana", gap).await);
        assert_eq!(Instant::now(), t0 + WINDOW);
        assert_eq!(pacer.reserve_recipient("dana", gap), t0 + WINDOW + gap);
    }
}
