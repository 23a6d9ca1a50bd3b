//! One connection during the measured run: publishes from its template at its rate, reads
//! what the broker sends, acknowledges QoS 1/2 both ways, and records latencies.
//!
//! A connection is one task that owns its socket; writes are gathered in a buffer and sent
//! in one `write_all` per turn, and reading never waits while there is something to send.

use crate::stream::Stream;
use crate::wire::{self, kind, PublishTemplate};
use anyhow::{bail, Result};
use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// How much a publisher writes before it sends: large enough to batch, small enough to
/// keep latency and memory low.
const WRITE_BATCH: usize = 32 * 1024;
/// What a connection asks the socket for at once.
const READ_CHUNK: usize = 64 * 1024;
/// A subscriber that sent nothing for this long pings, well inside the keep alive.
const PING_EVERY: Duration = Duration::from_secs(20);

/// The phases of a run, shared by all its connections.
#[derive(Clone, Copy, Debug)]
pub struct Timeline {
    /// The zero of every timestamp in payloads.
    pub start: Instant,
    /// Messages sent from here on are measured (the warm-up ends).
    pub measure_from: Instant,
    /// Publishing stops here.
    pub publish_until: Instant,
    /// Nobody waits past this for late messages or acknowledgements.
    pub drain_until: Instant,
    /// After publishing stops, a subscriber that received nothing for this long is done.
    pub quiet: Duration,
    /// Carried in every payload of this run.
    pub tag: u32,
}

impl Timeline {
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// What a connection publishes.
pub struct Publishing {
    pub template: PublishTemplate,
    pub qos: u8,
    /// Messages per second; `None` sends as fast as the broker takes them.
    pub rate: Option<f64>,
    /// Unacknowledged QoS 1/2 messages allowed at once.
    pub inflight: usize,
}

/// A connection's counts at the end of the run.
#[derive(Debug)]
pub struct Outcome {
    pub sent: u64,
    /// Sent within the measured window.
    pub sent_measured: u64,
    pub acked: u64,
    pub refused: u64,
    pub received: u64,
    /// Received within the measured window.
    pub received_measured: u64,
    /// Messages that were not sent by this run (a broker still delivering an earlier one).
    pub foreign: u64,
    /// End-to-end latency of measured messages, in microseconds.
    pub latency: Option<Histogram<u64>>,
    pub error: Option<String>,
}

/// A new latency histogram: 1 µs to 10 min with two significant digits, a few KiB each so
/// that a thousand subscribers can each keep one.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 2).unwrap_or_else(|_| {
        // The bounds above are valid constants; this branch cannot run.
        Histogram::new(2).unwrap_or_else(|_| unreachable!("hdrhistogram refused 2 digits"))
    })
}

struct State<'a> {
    version_v5: bool,
    timeline: &'a Timeline,
    inflight: usize,
    out: BytesMut,
    outcome: Outcome,
}

/// Runs one connection until its part of the run is over; errors end it early and are
/// kept in the outcome, so one failing connection does not hide the others' counts.
pub async fn drive(
    mut stream: Stream,
    mut read_buf: BytesMut,
    v5: bool,
    publishing: Option<Publishing>,
    subscribed: bool,
    timeline: &Timeline,
) -> Outcome {
    let mut state = State {
        version_v5: v5,
        timeline,
        inflight: 0,
        out: BytesMut::with_capacity(if publishing.is_some() {
            WRITE_BATCH + 1024
        } else {
            1024
        }),
        outcome: Outcome {
            sent: 0,
            sent_measured: 0,
            acked: 0,
            refused: 0,
            received: 0,
            received_measured: 0,
            foreign: 0,
            latency: subscribed.then(histogram),
            error: None,
        },
    };
    if let Err(e) = run(
        &mut stream,
        &mut read_buf,
        &publishing,
        subscribed,
        &mut state,
    )
    .await
    {
        state.outcome.error = Some(format!("{e:#}"));
    }
    // A DISCONNECT lets the broker drop the session at once instead of on a socket error.
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&[0xE0, 0x00])).await;
    state.outcome
}

async fn run(
    stream: &mut Stream,
    read_buf: &mut BytesMut,
    publishing: &Option<Publishing>,
    subscribed: bool,
    state: &mut State<'_>,
) -> Result<()> {
    let timeline = *state.timeline;
    let interval = publishing
        .as_ref()
        .and_then(|p| p.rate)
        .map(|rate| Duration::from_secs_f64(1.0 / rate));
    let mut next_send = timeline.start;
    let mut next_id: u16 = 0;
    let mut last_write = Instant::now();
    let mut last_read = Instant::now();
    loop {
        let now = Instant::now();
        if now >= timeline.drain_until {
            return Ok(());
        }
        let publishing_now = publishing.is_some() && now < timeline.publish_until;
        if !publishing_now {
            let acks_done = state.inflight == 0;
            let quiet = now.saturating_duration_since(last_read) >= timeline.quiet
                && now >= timeline.publish_until + timeline.quiet;
            if acks_done && (!subscribed || quiet) {
                return Ok(());
            }
        }
        if let (true, Some(p)) = (publishing_now, publishing) {
            let window = if p.qos > 0 { p.inflight } else { usize::MAX };
            while state.inflight < window
                && state.out.len() < WRITE_BATCH
                && (interval.is_none() || next_send <= now)
            {
                let packet_id = if p.qos > 0 {
                    next_id = next_id.checked_add(1).unwrap_or(1);
                    state.inflight += 1;
                    next_id
                } else {
                    0
                };
                // The send time is the wall clock now, not the schedule: a publisher that
                // fell behind shows it as latency rather than hiding it.
                let sent_at = Instant::now();
                p.template
                    .put(&mut state.out, packet_id, timeline.nanos(sent_at));
                state.outcome.sent += 1;
                if sent_at >= timeline.measure_from {
                    state.outcome.sent_measured += 1;
                }
                if let Some(interval) = interval {
                    next_send += interval;
                }
            }
        }
        if subscribed && now.saturating_duration_since(last_write) >= PING_EVERY {
            wire::put_pingreq(&mut state.out);
        }
        if !state.out.is_empty() {
            let budget = timeline.drain_until.saturating_duration_since(now);
            match tokio::time::timeout(budget, stream.write_all(&state.out)).await {
                Ok(result) => result?,
                Err(_) => return Ok(()),
            }
            state.out.clear();
            last_write = Instant::now();
        }

        let window_open = publishing_now
            && publishing
                .as_ref()
                .is_some_and(|p| p.qos == 0 || state.inflight < p.inflight);
        let send_now = window_open && interval.is_none();
        let mut wake = timeline.drain_until.min(last_write + PING_EVERY);
        if window_open && interval.is_some() {
            wake = wake.min(next_send);
        }
        if publishing.is_some() && now < timeline.publish_until {
            wake = wake.min(timeline.publish_until);
        } else if subscribed {
            wake =
                wake.min((last_read + timeline.quiet).max(timeline.publish_until + timeline.quiet));
        }
        // Reading into a nearly full buffer would take a few bytes per system call.
        if read_buf.capacity() - read_buf.len() < READ_CHUNK / 4 {
            read_buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            biased;
            read = stream.read_buf(read_buf) => {
                if read? == 0 {
                    bail!("the broker closed the connection");
                }
                last_read = Instant::now();
                handle_frames(read_buf, state, last_read)?;
            }
            _ = std::future::ready(()), if send_now => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Handles every whole packet in `buf`, queueing the acknowledgements they call for.
fn handle_frames(buf: &mut BytesMut, state: &mut State<'_>, now: Instant) -> Result<()> {
    let now_nanos = state.timeline.nanos(now);
    let measure_from = state.timeline.nanos(state.timeline.measure_from);
    let measure_until = state.timeline.nanos(state.timeline.publish_until);
    let measuring = (measure_from..measure_until).contains(&now_nanos);
    while let Some((header, total)) = wire::frame(buf)? {
        let first = buf[0];
        let body = &buf[header..total];
        match first >> 4 {
            kind::PUBLISH => {
                let incoming = wire::parse_publish(first, body, state.version_v5)?;
                let outcome = &mut state.outcome;
                match wire::stamp(incoming.payload) {
                    Some((sent, tag)) if tag == state.timeline.tag => {
                        outcome.received += 1;
                        // Throughput counts arrivals in the window; latency, messages sent
                        // in it (a backlog from the warm-up is not the window's latency).
                        if measuring {
                            outcome.received_measured += 1;
                        }
                        if (measure_from..measure_until).contains(&sent) {
                            if let Some(latency) = &mut outcome.latency {
                                let micros = now_nanos.saturating_sub(sent) / 1000;
                                latency.saturating_record(micros.max(1));
                            }
                        }
                    }
                    _ => outcome.foreign += 1,
                }
                match incoming.qos {
                    1 => wire::put_ack(&mut state.out, 0x40, incoming.packet_id),
                    2 => wire::put_ack(&mut state.out, 0x50, incoming.packet_id),
                    _ => {}
                }
            }
            kind::PUBACK | kind::PUBCOMP => {
                let (_, refused) = wire::parse_ack(body)?;
                state.inflight = state.inflight.saturating_sub(1);
                state.outcome.acked += 1;
                state.outcome.refused += u64::from(refused);
            }
            kind::PUBREC => {
                let (id, refused) = wire::parse_ack(body)?;
                if refused {
                    state.inflight = state.inflight.saturating_sub(1);
                    state.outcome.refused += 1;
                } else {
                    wire::put_ack(&mut state.out, 0x62, id);
                }
            }
            kind::PUBREL => {
                let (id, _) = wire::parse_ack(body)?;
                wire::put_ack(&mut state.out, 0x70, id);
            }
            kind::DISCONNECT => {
                let reason = body.first().copied().unwrap_or(0);
                bail!("the broker sent DISCONNECT (reason {reason:#04x})");
            }
            _ => {}
        }
        buf.advance(total);
    }
    Ok(())
}
