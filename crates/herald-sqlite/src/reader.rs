//! The readers: a few threads, each with its own read-only connection,
//! taking jobs from one queue. In WAL mode they read beside the writer
//! without waiting for it, each read seeing the last commit made before it
//! started.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use herald::store::StoreError;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::config::SqliteConfig;
use crate::error::{OpenError, failure};
use crate::writer::connect;

type Job = Box<dyn FnOnce(&Connection) + Send>;

/// The read threads and the queue that feeds them.
pub(crate) struct Readers {
    jobs: Option<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Readers {
    /// No threads: every read fails. Stands in while opening and closing.
    pub(crate) fn empty() -> Self {
        Self {
            jobs: None,
            threads: Vec::new(),
        }
    }

    /// Opens `config.read_connections` connections, each on its own thread.
    pub(crate) async fn open(config: &SqliteConfig) -> Result<Self, OpenError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let mut readers = Self {
            jobs: Some(jobs),
            threads: Vec::with_capacity(config.read_connections),
        };
        for i in 0..config.read_connections {
            let (ready, opened) = oneshot::channel();
            let thread_config = config.clone();
            let queue = Arc::clone(&queue);
            let thread = std::thread::Builder::new()
                .name(format!("herald-sqlite-read-{i}"))
                .spawn(move || {
                    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                    match connect(&thread_config, flags) {
                        Ok(conn) => {
                            let _ = ready.send(Ok(()));
                            serve(&conn, &queue);
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                        }
                    }
                })
                .map_err(|source| OpenError::Thread {
                    role: "reader",
                    source,
                })?;
            readers.threads.push(thread);
            match opened.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(OpenError::Database {
                        path: config.path.clone(),
                        source: "a reader thread stopped while opening".into(),
                    });
                }
            }
        }
        Ok(readers)
    }

    /// Runs `read` on a read connection and returns what it returns.
    pub(crate) async fn run<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(read(conn));
        });
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(job).ok())
            .ok_or_else(stopped)?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    failure("the read threads have stopped")
}

/// A reader thread's loop: one job at a time until the queue closes.
fn serve(conn: &Connection, queue: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let job = {
            // A panic never happens while the lock is held, but a poisoned
            // lock would still guard a sound receiver.
            let queue = queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.recv()
        };
        let Ok(job) = job else { return };
        // A job that panics drops its reply, so its caller gets an error;
        // the thread and its connection go on serving.
        if catch_unwind(AssertUnwindSafe(|| job(conn))).is_err() {
            tracing::error!("herald-sqlite: a read panicked");
        }
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        // Closing the queue ends each thread after its current job.
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
