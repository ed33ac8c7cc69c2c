//! Where log lines go: formatted on the thread that logs them, then queued, and
//! written to stderr by a thread of their own (`log-output`), whatever queued in one
//! write, at most every [`LINGER`]. A runtime worker never waits on stderr — a log
//! file on a disk busy with the store's `fsync`s, a full pipe, a stopped terminal —
//! and a node logging a line per call makes one `write` per 20 ms instead of one per
//! line. Measured with the side-by-side harness at 4,000 cps (one runtime worker,
//! logs to a file): writing each line from the worker stalled it for 38–114 ms in
//! three runs of four, queued no run for more than 16 ms; the CPU per call is about
//! the same either way, formatting a line being its cost (README, "Log output").
//!
//! Bounded: past [`Queue::capacity`] bytes waiting, a line is dropped and counted
//! (`tsunagu_log_lines_dropped_total`), never waited for. At exit the queue is
//! written out (when [`Output`] is dropped); a node killed with SIGKILL loses at most the
//! last [`LINGER`] of lines, and a panic's message (written by the panic hook
//! directly) may come before lines logged just ahead of it.

use prometheus_client::metrics::counter::Counter;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// How long the writer lets lines gather after the first one of a batch.
pub const LINGER: Duration = Duration::from_millis(20);

/// Bytes that may wait when none is configured: tens of thousands of lines.
pub const DEFAULT_CAPACITY: usize = 4 << 20;

/// Lines waiting to be written, and the writer's signal.
pub struct Queue {
    pending: Mutex<Pending>,
    wake: Condvar,
    capacity: usize,
    dropped: Counter,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    closed: bool,
}

impl Queue {
    pub fn new(capacity: usize) -> Queue {
        Queue {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            capacity,
            dropped: Counter::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one formatted line (an event is written whole, once); false if it was
    /// dropped (the queue full, or closed).
    pub fn push(&self, line: &[u8]) -> bool {
        let mut p = self.lock();
        if p.closed || p.bytes.len().saturating_add(line.len()) > self.capacity {
            drop(p);
            self.dropped.inc();
            return false;
        }
        let first = p.bytes.is_empty();
        p.bytes.extend_from_slice(line);
        drop(p);
        if first {
            self.wake.notify_one();
        }
        true
    }

    /// Lines dropped so far (the metric's counter, shared).
    pub fn dropped(&self) -> Counter {
        self.dropped.clone()
    }

    /// The writer's loop: waits for a first line, lets more gather for `linger`, then
    /// writes them all; until closed and empty.
    fn run(&self, out: &mut dyn Write, linger: Duration) {
        let mut batch = Vec::new();
        loop {
            {
                let mut p = self.lock();
                while p.bytes.is_empty() && !p.closed {
                    p = self.wake.wait(p).unwrap_or_else(|e| e.into_inner());
                }
                if p.bytes.is_empty() {
                    return; // closed, all written
                }
                if !p.closed {
                    drop(p);
                    std::thread::sleep(linger);
                    p = self.lock();
                }
                std::mem::swap(&mut batch, &mut p.bytes);
            }
            // A failed write (stderr closed) loses the batch: nothing better to do.
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            batch.clear();
            if batch.capacity() > self.capacity {
                batch = Vec::new(); // do not keep a burst's memory for ever
            }
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }
}

/// The queue as `tracing_subscriber`'s writer: each event's bytes are pushed whole.
#[derive(Clone)]
pub struct QueueWriter(Arc<Queue>);

impl Write for QueueWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len()) // a dropped line is counted, not an error to the logger
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for QueueWriter {
    type Writer = QueueWriter;

    fn make_writer(&'a self) -> QueueWriter {
        self.clone()
    }
}

/// The process's queue, once [`start`]ed (for the metric).
static QUEUE: OnceLock<Arc<Queue>> = OnceLock::new();

/// The writer thread of the process's log output; dropped, it writes out what is
/// queued and ends.
pub struct Output {
    queue: Arc<Queue>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Output {
    fn drop(&mut self) {
        self.queue.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the process's log output to stderr, `capacity` bytes at most waiting; the
/// writer to give `tracing_subscriber`. Called once; a second call gets a queue of
/// its own that the metric does not count.
pub fn start(capacity: usize) -> std::io::Result<(QueueWriter, Output)> {
    let queue = Arc::new(Queue::new(capacity));
    let _ = QUEUE.set(queue.clone());
    let q = queue.clone();
    let thread = std::thread::Builder::new()
        .name("log-output".into())
        // Locked for each write, not for the thread's life: `eprintln!` and the panic
        // hook take the same lock.
        .spawn(move || q.run(&mut std::io::stderr(), LINGER))?;
    Ok((
        QueueWriter(queue.clone()),
        Output {
            queue,
            thread: Some(thread),
        },
    ))
}

/// Log lines dropped because the queue was full (zero before [`start`]).
pub fn dropped_counter() -> Counter {
    QUEUE.get().map(|q| q.dropped()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink shared with the test.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut s = self.0.lock().unwrap();
            s.0.extend_from_slice(buf);
            s.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_written_in_order_in_batches_and_all_at_close() {
        let queue = Arc::new(Queue::new(1 << 20));
        let sink = Sink::default();
        let (q, mut out) = (queue.clone(), sink.clone());
        let writer = std::thread::spawn(move || q.run(&mut out, Duration::from_millis(50)));
        for i in 0..100 {
            assert!(queue.push(format!("line {i}\n").as_bytes()));
        }
        queue.close();
        writer.join().unwrap();
        let (bytes, writes) = sink.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        let want: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, want);
        assert!(writes <= 2, "100 lines in {writes} writes");
        assert_eq!(queue.dropped().get(), 0);
    }

    #[test]
    fn a_full_queue_drops_and_counts_never_waits() {
        let queue = Queue::new(10);
        assert!(queue.push(b"12345\n"));
        assert!(!queue.push(b"67890\n"), "past the capacity");
        assert!(queue.push(b"abc\n"), "what fits still goes");
        assert_eq!(queue.dropped().get(), 1);
        queue.close();
        assert!(!queue.push(b"x\n"), "closed");
        assert_eq!(queue.dropped().get(), 2);
        let mut out = Vec::new();
        queue.run(&mut out, Duration::ZERO);
        assert_eq!(out, b"12345\nabc\n");
    }
}
