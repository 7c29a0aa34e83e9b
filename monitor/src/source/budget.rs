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

/// One token bucket holding a single token: calls are spaced at least 1/rate apart, so no
/// one-second window sees more than rate + 1 of them (a bucket holding a second's worth would
/// allow twice the rate in a window straddling the burst, which AWS would throttle).
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
    /// No call before this: the service throttled us.
    paused_until: Option<Instant>,
    pause: Duration,
}

impl Bucket {
    fn new(rate: f64) -> Self {
        Bucket {
            rate,
            tokens: 1.0,
            last: Instant::now(),
            paused_until: None,
            pause: Duration::ZERO,
        }
    }

    /// Takes a token if one is there; otherwise how long until one is.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        if let Some(until) = self.paused_until {
            if now < until {
                return Err(until - now);
            }
            self.paused_until = None;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(1.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let missing = 1.0 - self.tokens;
        Err(Duration::from_secs_f64(missing / self.rate))
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
        self.paused_until = Some(now + self.pause + spread);
        self.tokens = 0.0;
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
            let wait = {
                let mut b = self.bucket(op).lock().unwrap_or_else(|e| e.into_inner());
                b.take(Instant::now())
            };
            match wait {
                Ok(()) => {
                    return Permit {
                        _slot: slot,
                        waited: started.elapsed(),
                    }
                }
                Err(d) => tokio::time::sleep(d).await,
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
        // One at once, then one every 125 ms.
        assert_eq!(b.take(t0), Ok(()));
        let wait = b.take(t0).unwrap_err();
        assert!(
            (wait.as_secs_f64() - 0.125).abs() < 1e-6,
            "{wait:?} before the second call"
        );
        let mut granted = 0;
        let mut now = t0;
        for _ in 0..10_000 {
            now += Duration::from_millis(1);
            if b.take(now).is_ok() {
                granted += 1;
            }
        }
        // Ten seconds at 8/s.
        assert_eq!(granted, 80);
    }

    #[test]
    fn throttles_in_a_row_pause_longer_and_a_success_resets() {
        let t0 = Instant::now();
        let mut b = Bucket::new(8.0);
        b.throttled(t0);
        let first = b.take(t0).unwrap_err();
        assert!(first >= FIRST_PAUSE && first < FIRST_PAUSE * 2, "{first:?}");
        b.throttled(t0);
        b.throttled(t0);
        let third = b.take(t0).unwrap_err();
        assert!(third >= FIRST_PAUSE * 4, "{third:?}");
        for _ in 0..10 {
            b.throttled(t0);
        }
        assert!(b.take(t0).unwrap_err() <= MAX_PAUSE + MAX_PAUSE / 4);
        b.succeeded();
        b.throttled(t0);
        assert!(b.take(t0).unwrap_err() < FIRST_PAUSE * 2);
        // After the pause, tokens come back at the rate.
        let later = t0 + Duration::from_secs(3);
        assert_eq!(b.take(later), Ok(()));
    }
}
