//! The CloudWatch Logs call budget. AWS counts GetLogEvents (25/s, 10/s in several regions,
//! not adjustable) and DescribeLogStreams (25/s) per account and region, whoever calls, so
//! every call the daemon makes for one account and region draws from one budget: a token
//! bucket per operation, a bound on calls in flight, and, when AWS throttles anyway (another
//! tool in the account spends the same quota), a pause for every caller that grows with
//! each throttle in a row and ends with the first success.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The operations with a budget of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    GetLogEvents,
    /// DescribeLogStreams, and the rare DescribeLogGroups the source makes with it.
    Describe,
}

/// Calls per second allowed for each operation, and calls in flight at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rates {
    pub get_log_events: f64,
    pub describe: f64,
    pub concurrency: usize,
}

/// Longest pause after throttles in a row: long enough for another tool's burst to pass,
/// short enough that a daemon is not blind for minutes.
const MAX_PAUSE: Duration = Duration::from_secs(60);
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// Timers wake up to a millisecond late. Held to the full spacing from the call before, every
/// caller would wait that much longer than the one before it, the lag would grow call by call
/// until callers booked later went first.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// Calls of one operation, spaced 1/rate apart (less the timer's slack): no one-second window
/// sees more than rate + 1 of them (a bucket holding a second's worth would allow twice the
/// rate in a window straddling the burst, which AWS would throttle). Each caller books the next free time and
/// waits for it, so callers go in the order they came: waiters that each slept until "a token
/// is there" and raced for it let one read wait seconds while later ones went ahead.
struct Bucket {
    rate: f64,
    /// The earliest time the next call may be booked for.
    next: Instant,
    /// When the last call was let through. A caller woken late (the runtime busy decoding a
    /// page) must not go together with the next one booked: the spacing holds between the
    /// calls as made, not only as booked, less the timer's slack ([`TIMER_SLACK`]).
    last_grant: Option<Instant>,
    /// No call before this: the service throttled us.
    paused_until: Option<Instant>,
    pause: Duration,
}

/// What a booked call does when its time comes.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Go,
    /// The call before it went late: it waits for the spacing from that one.
    WaitUntil(Instant),
    /// Throttled while it waited: it is booked again, after the pause.
    BookAgain,
}

impl Bucket {
    fn new(rate: f64) -> Self {
        Bucket {
            rate,
            next: Instant::now(),
            last_grant: None,
            paused_until: None,
            pause: Duration::ZERO,
        }
    }

    fn spacing(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rate.max(0.001))
    }

    /// Books the next call: when it may be made.
    fn book(&mut self, now: Instant) -> Instant {
        let mut at = self.next.max(now);
        if let Some(until) = self.paused_until {
            if until > now {
                at = at.max(until);
            } else {
                self.paused_until = None;
            }
        }
        self.next = at + self.spacing();
        at
    }

    /// Whether a throttle came after a call was booked, and pauses it.
    fn paused(&self, now: Instant) -> bool {
        self.paused_until.is_some_and(|until| until > now)
    }

    /// What a call booked for `now` or earlier does now.
    fn grant(&mut self, now: Instant) -> Verdict {
        if self.paused(now) {
            return Verdict::BookAgain;
        }
        if let Some(last) = self.last_grant {
            let slack = TIMER_SLACK.min(self.spacing() / 10);
            let earliest = last + self.spacing() - slack;
            if now < earliest {
                return Verdict::WaitUntil(earliest);
            }
        }
        self.last_grant = Some(now);
        self.next = self.next.max(now + self.spacing());
        Verdict::Go
    }

    fn throttled(&mut self, now: Instant) {
        self.pause = if self.pause.is_zero() {
            FIRST_PAUSE
        } else {
            (self.pause * 2).min(MAX_PAUSE)
        };
        // A little spread, so that daemons throttled together do not come back together.
        let spread = self
            .pause
            .mul_f64(f64::from(now.elapsed().subsec_nanos() % 250) / 1000.0);
        let until = now + self.pause + spread;
        self.paused_until = Some(until);
        self.next = self.next.max(until);
    }

    fn succeeded(&mut self) {
        self.pause = Duration::ZERO;
    }
}

/// The budget of one account and region.
pub struct Budget {
    get_log_events: Mutex<Bucket>,
    describe: Mutex<Bucket>,
    in_flight: Arc<Semaphore>,
    pub rates: Rates,
}

/// Leave to make one call: hold it for the call's duration.
pub struct Permit {
    _slot: OwnedSemaphorePermit,
    /// How long the caller waited for it.
    pub waited: Duration,
}

impl Budget {
    pub fn new(rates: Rates) -> Self {
        Budget {
            get_log_events: Mutex::new(Bucket::new(rates.get_log_events)),
            describe: Mutex::new(Bucket::new(rates.describe)),
            in_flight: Arc::new(Semaphore::new(rates.concurrency.max(1))),
            rates,
        }
    }

    fn bucket(&self, op: Operation) -> &Mutex<Bucket> {
        match op {
            Operation::GetLogEvents => &self.get_log_events,
            Operation::Describe => &self.describe,
        }
    }

    /// Waits until a call of `op` is within the budget, then holds one of the slots for calls
    /// in flight.
    pub async fn acquire(&self, op: Operation) -> Permit {
        let started = Instant::now();
        let slot = match self.in_flight.clone().acquire_owned().await {
            Ok(slot) => slot,
            // The semaphore is never closed; were it, a call without a slot is still rate
            // limited below.
            Err(_) => Arc::new(Semaphore::new(1))
                .acquire_owned()
                .await
                .expect("a new semaphore has a permit"),
        };
        loop {
            let at = {
                let mut b = self.bucket(op).lock().unwrap_or_else(|e| e.into_inner());
                b.book(Instant::now())
            };
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
            loop {
                let verdict = {
                    let mut b = self.bucket(op).lock().unwrap_or_else(|e| e.into_inner());
                    b.grant(Instant::now())
                };
                match verdict {
                    Verdict::Go => {
                        return Permit {
                            _slot: slot,
                            waited: started.elapsed(),
                        }
                    }
                    Verdict::WaitUntil(earliest) => {
                        tokio::time::sleep_until(tokio::time::Instant::from_std(earliest)).await
                    }
                    Verdict::BookAgain => break,
                }
            }
        }
    }

    /// AWS throttled a call of `op`: every caller of `op` pauses.
    pub fn throttled(&self, op: Operation) {
        let mut b = self.bucket(op).lock().unwrap_or_else(|e| e.into_inner());
        b.throttled(Instant::now());
    }

    /// A call of `op` went through: the next throttle pauses for the shortest time again.
    pub fn succeeded(&self, op: Operation) {
        let mut b = self.bucket(op).lock().unwrap_or_else(|e| e.into_inner());
        b.succeeded();
    }
}

/// The budget for the account and region `clients` call: the first caller's rates make it,
/// later callers share it. One process has one credential chain, so one set of clients per
/// region is one account and region.
pub fn shared(clients: &crate::aws::Clients, rates: Rates) -> Arc<Budget> {
    type Key = (Arc<crate::aws::Chain>, String);
    type Registry = Mutex<Vec<(Key, Arc<Budget>)>>;
    static BUDGETS: OnceLock<Registry> = OnceLock::new();
    let all = BUDGETS.get_or_init(|| Mutex::new(Vec::new()));
    let mut all = all.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, b)) = all.iter().find(|((chain, region), _)| {
        Arc::ptr_eq(chain, &clients.chain) && *region == clients.region
    }) {
        if b.rates != rates {
            crate::events::ProcessEvent::emit(crate::events::BudgetAlreadySet {
                region: &clients.region,
            });
        }
        return b.clone();
    }
    let b = Arc::new(Budget::new(rates));
    all.push(((clients.chain.clone(), clients.region.clone()), b.clone()));
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_rate_and_no_more() {
        let t0 = Instant::now();
        let mut b = Bucket::new(8.0);
        b.next = t0;
        // One at once, then one every 125 ms.
        assert_eq!(b.book(t0), t0);
        assert_eq!(b.book(t0), t0 + Duration::from_millis(125));
        // Callers that come while others wait are booked after them, in order.
        let later: Vec<Instant> = (0..78).map(|_| b.book(t0)).collect();
        assert!(later.windows(2).all(|w| w[1] > w[0]));
        // Eighty calls in ten seconds at 8/s.
        assert!(later[77] < t0 + Duration::from_secs(10));
        assert!(b.book(t0) >= t0 + Duration::from_secs(10));
        // Time without calls does not save up a burst.
        let idle = t0 + Duration::from_secs(60);
        assert_eq!(b.book(idle), idle);
        assert_eq!(b.book(idle), idle + Duration::from_millis(125));
    }

    #[test]
    fn callers_woken_late_still_go_a_spacing_apart() {
        let t0 = Instant::now();
        let mut b = Bucket::new(8.0);
        b.next = t0;
        let first = b.book(t0);
        let second = b.book(t0);
        assert_eq!(second, t0 + Duration::from_millis(125));
        // Both woken a second late, together: the second waits a spacing after the first.
        let late = t0 + Duration::from_secs(1);
        assert_eq!(b.grant(late.max(first)), Verdict::Go);
        let earliest = late + Duration::from_millis(125) - TIMER_SLACK;
        assert_eq!(b.grant(late), Verdict::WaitUntil(earliest));
        assert_eq!(b.grant(earliest), Verdict::Go);
        // And the next booked comes a spacing after the calls as made.
        assert_eq!(b.book(earliest), earliest + Duration::from_millis(125));
    }

    #[test]
    fn throttles_in_a_row_pause_longer_and_a_success_resets() {
        let t0 = Instant::now();
        let mut b = Bucket::new(8.0);
        b.next = t0;
        b.throttled(t0);
        assert!(b.paused(t0));
        assert_eq!(b.grant(t0), Verdict::BookAgain);
        let first = b.book(t0) - t0;
        assert!(first >= FIRST_PAUSE && first < FIRST_PAUSE * 2, "{first:?}");
        b.throttled(t0);
        b.throttled(t0);
        let third = b.book(t0) - t0;
        assert!(third >= FIRST_PAUSE * 4, "{third:?}");
        for _ in 0..10 {
            b.throttled(t0);
        }
        let longest = b.book(t0) - t0;
        assert!(
            longest >= MAX_PAUSE && longest <= MAX_PAUSE + MAX_PAUSE / 4,
            "{longest:?}"
        );
        // After a success the next throttle pauses for the shortest time again.
        let mut fresh = Bucket::new(8.0);
        fresh.throttled(t0);
        fresh.throttled(t0);
        fresh.succeeded();
        let t1 = t0 + Duration::from_secs(10);
        fresh.throttled(t1);
        let again = fresh.book(t1) - t1;
        assert!(again < FIRST_PAUSE * 2, "{again:?}");
        // After the pause, calls come at the rate.
        let after = t1 + Duration::from_secs(3);
        assert!(!fresh.paused(after));
        assert_eq!(fresh.book(after), after);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn callers_are_let_through_in_the_order_they_came() {
        let budget = Arc::new(Budget::new(Rates {
            get_log_events: 40.0,
            describe: 5.0,
            concurrency: 4,
        }));
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..40 {
            let budget = budget.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let permit = budget.acquire(Operation::GetLogEvents).await;
                order.lock().unwrap().push(i);
                // A call of varying length: later callers must still not overtake.
                tokio::time::sleep(Duration::from_millis((i % 3) as u64)).await;
                drop(permit);
            }));
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(order, (0..40).collect::<Vec<_>>());
    }
}
