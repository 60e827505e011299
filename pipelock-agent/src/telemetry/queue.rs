//! The log-writing thread: runtime workers append formatted lines to one
//! shared buffer and never wait for stdout or the file; the thread takes
//! everything queued at once and writes it with one call. Woken by the
//! first line after a quiet spell, it lets more lines join for [`LINGER`]
//! (lines reach stdout at most that much later), so a busy agent makes a
//! few hundred writes and wake-ups a second, not two per connection; an idle
//! agent makes none.
//!
//! It replaces `tracing_appender::non_blocking`, whose thread wrote each
//! line with a `write(2)` of its own and spun (`sched_yield`) on its channel
//! before sleeping: on a new-connection load (two lines per connection) that
//! thread took an eighth of the agent's CPU (`cargo xtask bench relay`).
//!
//! Nothing is dropped: past [`MAX_QUEUED`] bytes a line waits for room, as
//! the non-lossy appender did. Lines keep their order, and each is written
//! whole.
use std::{
    io::Write,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::JoinHandle,
    time::Duration,
};

use tracing_subscriber::fmt::MakeWriter;

/// Queued bytes past which a new line waits for the thread to take them.
pub const MAX_QUEUED: usize = 16 << 20;

/// How long dropping the guard waits for the queued lines to be written.
const DRAIN_ON_DROP: Duration = Duration::from_secs(1);

/// A batch buffer larger than this is not kept for the next batch.
const KEEP_CAPACITY: usize = 64 << 10;

/// How long the thread lets lines gather before writing them.
pub const LINGER: Duration = Duration::from_millis(2);

/// Queued bytes that are written at once, without lingering.
const FULL_BATCH: usize = 256 << 10;

#[derive(Default)]
struct State {
    /// Lines queued, whole, in order.
    buf: Vec<u8>,
    /// The guard was dropped: write what is queued and stop.
    closed: bool,
    /// The thread wrote everything and stopped.
    done: bool,
    /// The thread sleeps on `more` (a line must wake it).
    thread_waiting: bool,
    /// Lines wait on `room`.
    producers_waiting: usize,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when a line is queued, the guard drops, or the thread stops.
    more: Condvar,
    /// Signalled when the thread took the queued bytes.
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one formatted line (or part of one: a writer's bytes in order).
    fn push(&self, line: &[u8]) {
        let mut st = self.lock();
        while st.buf.len() >= MAX_QUEUED && !st.closed {
            st.producers_waiting += 1;
            st = self.room.wait(st).unwrap_or_else(|p| p.into_inner());
            st.producers_waiting -= 1;
        }
        st.buf.extend_from_slice(line);
        let wake = std::mem::take(&mut st.thread_waiting);
        drop(st);
        if wake {
            self.more.notify_all();
        }
    }
}

/// The writer side handed to tracing: cheap to make per event.
#[derive(Clone)]
pub struct QueueWriter {
    shared: Arc<Shared>,
}

impl Write for &QueueWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.shared.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for QueueWriter {
    type Writer = &'a QueueWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Keeps the thread running; dropping it writes the queued lines (waiting
/// at most [`DRAIN_ON_DROP`]) and stops the thread.
pub struct QueueGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.closed = true;
        drop(st);
        self.shared.more.notify_all();
        self.shared.room.notify_all();
        let st = self.shared.lock();
        let (st, _) = self
            .shared
            .more
            .wait_timeout_while(st, DRAIN_ON_DROP, |s| !s.done)
            .unwrap_or_else(|p| p.into_inner());
        let done = st.done;
        drop(st);
        if let (true, Some(t)) = (done, self.thread.take()) {
            let _ = t.join();
        }
    }
}

/// Starts the thread that writes queued lines to `out` (named `name`).
pub fn spawn<W: Write + Send + 'static>(
    out: W,
    name: &str,
) -> std::io::Result<(QueueWriter, QueueGuard)> {
    let shared = Arc::new(Shared::default());
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(&shared, out))?
    };
    Ok((
        QueueWriter {
            shared: shared.clone(),
        },
        QueueGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

/// The thread: takes all queued bytes, writes them, until closed and empty.
fn run<W: Write>(shared: &Shared, mut out: W) {
    let mut batch = Vec::new();
    loop {
        let mut st = shared.lock();
        while st.buf.is_empty() && !st.closed {
            st.thread_waiting = true;
            st = shared.more.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.thread_waiting = false;
        if !st.closed && st.buf.len() < FULL_BATCH {
            drop(st);
            std::thread::sleep(LINGER);
            st = shared.lock();
        }
        if st.buf.is_empty() {
            st.done = true;
            drop(st);
            shared.more.notify_all();
            return;
        }
        std::mem::swap(&mut st.buf, &mut batch);
        let waiters = st.producers_waiting > 0;
        drop(st);
        if waiters {
            shared.room.notify_all();
        }
        // A failed write loses this batch, as the appender lost its line;
        // there is nowhere else to report it.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if batch.capacity() > KEEP_CAPACITY {
            batch = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `io::Write` whose bytes the test can read.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_every_line_in_order_by_the_time_the_guard_drops() {
        let sink = Sink::default();
        let (w, guard) = spawn(sink.clone(), "test-log").unwrap();
        let producers: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        (&w).write_all(format!("{t} {i}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        drop(guard);
        let bytes = sink.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4000);
        for t in 0..4 {
            let mine: Vec<usize> = lines
                .iter()
                .filter_map(|l| l.strip_prefix(&format!("{t} ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(
                mine,
                (0..1000).collect::<Vec<_>>(),
                "thread {t} out of order"
            );
        }
    }

    /// A writer that blocks inside `write` until the test opens it, and
    /// says when a write is waiting there.
    struct Gated {
        sink: Sink,
        /// (a write entered, the gate is open)
        gate: Arc<(Mutex<(bool, bool)>, Condvar)>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (m, cv) = &*self.gate;
            let mut g = m.lock().unwrap();
            g.0 = true;
            cv.notify_all();
            while !g.1 {
                g = cv.wait(g).unwrap();
            }
            self.sink.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_makes_the_line_wait_not_vanish() {
        let sink = Sink::default();
        let gate = Arc::new((Mutex::new((false, false)), Condvar::new()));
        let out = Gated {
            sink: sink.clone(),
            gate: gate.clone(),
        };
        let (w, guard) = spawn(out, "test-log").unwrap();
        (&w).write_all(b"first\n").unwrap();
        // The thread holds "first" inside the blocked write.
        {
            let (m, cv) = &*gate;
            let mut g = m.lock().unwrap();
            while !g.0 {
                g = cv.wait(g).unwrap();
            }
        }
        (&w).write_all(&vec![b'x'; MAX_QUEUED]).unwrap();
        let late = {
            let w = w.clone();
            std::thread::spawn(move || (&w).write_all(b"\nlate\n").unwrap())
        };
        // The queue is full: the late line waits for room.
        while w.shared.lock().producers_waiting == 0 {
            std::thread::yield_now();
        }
        {
            let (m, cv) = &*gate;
            m.lock().unwrap().1 = true;
            cv.notify_all();
        }
        late.join().unwrap();
        drop(guard);
        let bytes = sink.0.lock().unwrap().clone();
        assert_eq!(bytes.len(), 6 + MAX_QUEUED + 6);
        assert!(bytes.starts_with(b"first\nxxx"));
        assert!(bytes.ends_with(b"x\nlate\n"));
    }
}
