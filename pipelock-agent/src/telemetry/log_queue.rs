//! The log-writing thread: runtime workers append formatted lines to one
//! shared buffer and never wait for stdout or the log file; a thread of its
//! own writes what has gathered, in one call.
//!
//! A line after a quiet spell is written at once. Under a stream of lines
//! (thousands of connections a second, each logged) the thread lets them
//! gather for at most [`LINGER`] after its previous write, so a burst costs
//! one `write(2)` and one wake-up instead of one per line: on the
//! new-connection path that was 12 % of the agent's CPU. Nothing is dropped:
//! past [`MAX_QUEUED`] bytes a worker waits for the thread (as the bounded
//! channel of `tracing-appender` did, whose 128k preallocated slots also
//! cost 4 MB of idle memory).
use std::{
    io::Write as _,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tracing_subscriber::fmt::{MakeWriter, writer::BoxMakeWriter};

/// How long lines may gather after a write before the next one.
pub const LINGER: Duration = Duration::from_millis(1);
/// Queued bytes past which a logging worker waits for the thread.
pub const MAX_QUEUED: usize = 4 << 20;
/// A drained buffer larger than this is shrunk back (a burst does not keep
/// its peak allocated).
const KEEP_CAPACITY: usize = 64 << 10;

/// The queue shared by the loggers and the writing thread.
struct Shared {
    state: Mutex<State>,
    /// Lines arrived, or the queue closed.
    ready: Condvar,
    /// The thread took the buffer (room for waiting loggers).
    drained: Condvar,
    /// Where lines go (stdout, the file, or both).
    out: BoxMakeWriter,
}

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write_out(&self, bytes: &[u8]) {
        let mut out = self.out.make_writer();
        // A log sink that fails (stdout closed) must not stop the agent;
        // there is nowhere left to report it.
        let _ = out.write_all(bytes).and_then(|()| out.flush());
    }

    /// Queues one formatted line (or part of one).
    fn push(&self, bytes: &[u8]) {
        let mut st = self.lock();
        while st.buf.len() >= MAX_QUEUED && !st.closed {
            st = self.drained.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.closed {
            // After shutdown: written at once, in order with the rest.
            self.write_out(bytes);
            return;
        }
        let wake = st.buf.is_empty();
        st.buf.extend_from_slice(bytes);
        drop(st);
        if wake {
            self.ready.notify_one();
        }
    }

    /// The writing thread's loop: until closed and drained.
    fn run(&self) {
        let mut spare = Vec::new();
        let mut last_write: Option<Instant> = None;
        loop {
            let mut st = self.lock();
            while st.buf.is_empty() && !st.closed {
                st = self.ready.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.buf.is_empty() {
                return;
            }
            if let Some(left) = last_write.and_then(|t| LINGER.checked_sub(t.elapsed()))
                && !st.closed
                && st.buf.len() < MAX_QUEUED
            {
                drop(st);
                std::thread::sleep(left);
                st = self.lock();
            }
            std::mem::swap(&mut st.buf, &mut spare);
            drop(st);
            self.drained.notify_all();
            self.write_out(&spare);
            last_write = Some(Instant::now());
            spare.clear();
            if spare.capacity() > KEEP_CAPACITY {
                spare.shrink_to(KEEP_CAPACITY);
            }
        }
    }
}

/// A `MakeWriter` whose writers queue into [`Shared`].
#[derive(Clone)]
struct QueueWriter(Arc<Shared>);

impl std::io::Write for QueueWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for QueueWriter {
    type Writer = QueueWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Keeps the log-writing thread running; dropping it writes the lines still
/// queued and stops the thread (hold it until the agent exits).
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
        self.shared.drained.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `out` behind the log-writing thread. When the thread cannot be started,
/// lines are written by the logging worker itself.
pub fn start(out: BoxMakeWriter) -> (BoxMakeWriter, LogGuard) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        ready: Condvar::new(),
        drained: Condvar::new(),
        out,
    });
    let runner = shared.clone();
    let thread = std::thread::Builder::new()
        .name("pipelock-log".into())
        .spawn(move || runner.run());
    let thread = match thread {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("pipelock-agent: cannot start the log-writing thread ({e}); logging inline");
            shared.lock().closed = true;
            None
        }
    };
    let writer = BoxMakeWriter::new(QueueWriter(shared.clone()));
    (writer, LogGuard { shared, thread })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that records what each `write` call received.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn queue() -> (Sink, BoxMakeWriter, LogGuard) {
        let sink = Sink::default();
        let s = sink.clone();
        let (w, g) = start(BoxMakeWriter::new(move || s.clone()));
        (sink, w, g)
    }

    fn wait_for(sink: &Sink, bytes: usize) -> Vec<u8> {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let got: Vec<u8> = sink.0.lock().unwrap().concat();
            if got.len() >= bytes || Instant::now() > end {
                return got;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn every_line_arrives_in_order_and_a_burst_is_written_in_few_calls() {
        let (sink, w, guard) = queue();
        let mut expect = Vec::new();
        for i in 0..20_000 {
            let line = format!("line {i}\n");
            w.make_writer().write_all(line.as_bytes()).unwrap();
            expect.extend_from_slice(line.as_bytes());
        }
        drop(guard);
        assert_eq!(sink.0.lock().unwrap().concat(), expect);
        let calls = sink.0.lock().unwrap().len();
        assert!(calls < 2_000, "{calls} writes for 20,000 lines");
    }

    #[test]
    fn lines_apart_in_time_are_written_as_they_come() {
        let (sink, w, _guard) = queue();
        w.make_writer().write_all(b"first\n").unwrap();
        assert_eq!(wait_for(&sink, 6), b"first\n");
        std::thread::sleep(LINGER * 5);
        w.make_writer().write_all(b"second\n").unwrap();
        assert_eq!(wait_for(&sink, 13), b"first\nsecond\n");
        let calls = sink.0.lock().unwrap().clone();
        assert_eq!(calls, [b"first\n".to_vec(), b"second\n".to_vec()]);
    }

    #[test]
    fn lines_logged_after_shutdown_are_written_directly() {
        let (sink, w, guard) = queue();
        w.make_writer().write_all(b"before\n").unwrap();
        drop(guard);
        w.make_writer().write_all(b"after\n").unwrap();
        assert_eq!(sink.0.lock().unwrap().concat(), b"before\nafter\n");
    }

    #[test]
    fn loggers_wait_instead_of_dropping_when_the_sink_is_slow() {
        #[derive(Clone, Default)]
        struct Slow(Arc<Mutex<usize>>);
        impl std::io::Write for Slow {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                std::thread::sleep(Duration::from_millis(20));
                *self.0.lock().unwrap() += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let slow = Slow::default();
        let s = slow.clone();
        let (w, guard) = start(BoxMakeWriter::new(move || s.clone()));
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..12 {
            w.make_writer().write_all(&chunk).unwrap();
        }
        drop(guard);
        assert_eq!(*slow.0.lock().unwrap(), 12 << 20);
    }
}
