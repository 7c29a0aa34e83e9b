//! Writing events into a log stream the way the service requires, whatever an emulator would
//! accept: chronological order within a call, at most 10,000 events, at most 1,048,576 bytes
//! counting 26 bytes of overhead per event, and a span of at most 24 hours per call. The
//! simulator's CloudWatch output and the tests that fill a log group share it.

use aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata;
use aws_sdk_cloudwatchlogs::types::InputLogEvent;

use crate::Clients;

/// Events per PutLogEvents call.
pub const PUT_MAX_EVENTS: usize = 10_000;
/// Bytes per call: the UTF-8 message bytes plus 26 per event.
pub const PUT_MAX_BYTES: usize = 1_048_576;
/// Newest minus oldest timestamp within one call.
pub const PUT_MAX_SPAN_MS: i64 = 24 * 3_600 * 1_000;
const EVENT_OVERHEAD: usize = 26;

/// Sorts `events` (timestamp in ms, message) and cuts them into calls within the limits.
/// The sort is stable, so events with one timestamp keep their order.
pub fn put_log_events_batches(mut events: Vec<(i64, String)>) -> Vec<Vec<(i64, String)>> {
    events.sort_by_key(|e| e.0);
    let mut batches = Vec::new();
    let mut current: Vec<(i64, String)> = Vec::new();
    let mut bytes = 0usize;
    for event in events {
        let size = event.1.len() + EVENT_OVERHEAD;
        let full = current.len() == PUT_MAX_EVENTS
            || bytes + size > PUT_MAX_BYTES
            || current
                .first()
                .is_some_and(|first| event.0 - first.0 > PUT_MAX_SPAN_MS);
        if full && !current.is_empty() {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(event);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Writes `events` (timestamp in ms, message) to `stream` of `group`, creating the stream if
/// it is missing, in as few PutLogEvents calls as the limits allow. `progress` hears the
/// number of events each call wrote.
pub async fn put_events(
    clients: &Clients,
    group: &str,
    stream: &str,
    events: Vec<(i64, String)>,
    mut progress: impl FnMut(usize),
) -> Result<(), String> {
    match clients
        .logs
        .create_log_stream()
        .log_group_name(group)
        .log_stream_name(stream)
        .send()
        .await
    {
        Ok(_) => {}
        Err(e) if e.code() == Some("ResourceAlreadyExistsException") => {}
        Err(e) => {
            return Err(format!(
                "CreateLogStream {group}/{stream}: {}",
                e.message().unwrap_or(&e.to_string())
            ))
        }
    }
    for batch in put_log_events_batches(events) {
        let n = batch.len();
        let batch: Vec<InputLogEvent> = batch
            .into_iter()
            .map(|(ts, msg)| InputLogEvent::builder().timestamp(ts).message(msg).build())
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        clients
            .logs
            .put_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .set_log_events(Some(batch))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "PutLogEvents {group}/{stream}: {}",
                    e.message().unwrap_or(&e.to_string())
                )
            })?;
        progress(n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_is_respected_and_nothing_is_lost() {
        // 25,000 small events over 3 days, given out of order, plus some large ones.
        let mut events: Vec<(i64, String)> = (0..25_000i64)
            .map(|i| {
                (
                    (i * 7_919) % 25_000 * 10_368_000 / 1_000,
                    format!("event {i}"),
                )
            })
            .collect();
        events.extend((0..40).map(|i| (i * 1_000, "x".repeat(100_000))));
        let total = events.len();
        let batches = put_log_events_batches(events);
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), total);
        for b in &batches {
            assert!(b.len() <= PUT_MAX_EVENTS);
            assert!(b.iter().map(|e| e.1.len() + 26).sum::<usize>() <= PUT_MAX_BYTES);
            assert!(b.windows(2).all(|w| w[0].0 <= w[1].0));
            assert!(b[b.len() - 1].0 - b[0].0 <= PUT_MAX_SPAN_MS);
        }
        // The byte limit split the large events: 40 of 100 kB cannot share one call.
        assert!(batches.len() >= 5, "{}", batches.len());
    }
}
