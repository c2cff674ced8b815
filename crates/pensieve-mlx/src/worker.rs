//! The worker process: started with the venv's Python, spoken to over its standard input
//! and output, its standard error logged, restarted when it dies, stopped on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::protocol::{self, Hello, Op};

/// The worker's source, embedded so that the binary is all there is to install; written
/// out to a file (so a traceback names a real file).
const WORKER_SOURCE: &str = include_str!("../../../python/pensieve_mlx/worker.py");

/// How long the worker gets to exit after SHUTDOWN before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot start the MLX worker with {python}: {reason}")]
    Spawn { python: PathBuf, reason: String },
    /// The process is gone (or its pipes are): what it held is lost.
    #[error("the MLX worker died: {0}")]
    Died(String),
    /// The worker answered this request with an error; it is still serving.
    #[error("the MLX worker refused the request: {0}")]
    Refused(String),
    #[error(transparent)]
    Malformed(#[from] protocol::Malformed),
}

/// How to start a worker and what to load in it.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub python: PathBuf,
    /// Where the worker's source is written (the embedded copy, when it differs).
    pub script: PathBuf,
    /// The model folder (or Hub id) mlx-lm loads.
    pub model: String,
    pub sequences: usize,
    pub context: u32,
}

/// A running worker that has loaded its model.
pub struct Worker {
    spec: WorkerSpec,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The last line the worker wrote to its log, to say why it died.
    last_log: Arc<Mutex<String>>,
    pub hello: Hello,
}

impl Worker {
    /// Start the process and load the model (HELLO).
    pub fn start(spec: &WorkerSpec) -> Result<Worker, WorkerError> {
        let spawn_error = |reason: String| WorkerError::Spawn {
            python: spec.python.clone(),
            reason,
        };
        if std::fs::read_to_string(&spec.script).ok().as_deref() != Some(WORKER_SOURCE) {
            std::fs::write(&spec.script, WORKER_SOURCE)
                .map_err(|e| spawn_error(format!("cannot write {}: {e}", spec.script.display())))?;
        }
        let mut command = Command::new(&spec.python);
        command
            .arg(&spec.script)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A group of its own: Ctrl-C in a terminal (or a signal to the server's group) must
        // not kill the worker before the server has saved its prefix cache through it. It
        // still exits with the server: SHUTDOWN on drop, or end-of-file on its stdin.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().map_err(|e| spawn_error(e.to_string()))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            return Err(spawn_error("no pipes".into()));
        };
        let pid = child.id();
        let last_log = Arc::new(Mutex::new(String::new()));
        let last = last_log.clone();
        std::thread::Builder::new()
            .name("mlx-worker-log".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    tracing::info!(target: "pensieve_mlx::worker", pid, "{line}");
                    if !line.trim().is_empty() {
                        if let Ok(mut l) = last.lock() {
                            *l = line;
                        }
                    }
                }
            })
            .map_err(|e| spawn_error(e.to_string()))?;
        let mut worker = Worker {
            spec: spec.clone(),
            child,
            stdin,
            stdout: BufReader::new(stdout),
            last_log,
            hello: Hello {
                version: 0,
                vocab_size: 0,
                can_truncate: false,
                kv_bytes_per_token: 0,
                model_type: String::new(),
                mlx: String::new(),
                mlx_lm: String::new(),
                vision: None,
            },
        };
        let started = Instant::now();
        let body = protocol::hello(&spec.model, spec.sequences, spec.context);
        let answer = worker.call(Op::Hello, &body).map_err(|e| match e {
            WorkerError::Refused(reason) => {
                spawn_error(format!("cannot load {}: {reason}", spec.model))
            }
            WorkerError::Died(reason) => spawn_error(format!(
                "it exited while starting ({reason}). Is MLX installed for this Python? \
                 `pensieve setup mlx` installs it, --python picks another"
            )),
            other => other,
        })?;
        worker.hello = protocol::parse_hello(&answer)?;
        if worker.hello.version != protocol::VERSION {
            return Err(spawn_error(format!(
                "worker speaks protocol {}, this server {}",
                worker.hello.version,
                protocol::VERSION
            )));
        }
        tracing::info!(
            pid,
            model = %spec.model,
            model_type = %worker.hello.model_type,
            mlx = %worker.hello.mlx,
            mlx_lm = %worker.hello.mlx_lm,
            load_ms = started.elapsed().as_millis() as u64,
            "MLX worker ready"
        );
        Ok(worker)
    }

    /// A fresh worker with the same model, this one killed.
    pub fn restart(&mut self) -> Result<(), WorkerError> {
        self.kill();
        let fresh = Worker::start(&self.spec)?;
        *self = fresh;
        Ok(())
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// One request, one response.
    pub fn call(&mut self, op: Op, body: &[u8]) -> Result<Vec<u8>, WorkerError> {
        let frame = protocol::frame(&protocol::request(op, body));
        let sent = self
            .stdin
            .write_all(&frame)
            .and_then(|()| self.stdin.flush());
        if let Err(e) = sent {
            return Err(self.died(format!("writing to it: {e}")));
        }
        let mut len = [0u8; 4];
        if let Err(e) = self.stdout.read_exact(&mut len) {
            return Err(self.died(format!("reading from it: {e}")));
        }
        let mut payload = vec![0u8; u32::from_le_bytes(len) as usize];
        if let Err(e) = self.stdout.read_exact(&mut payload) {
            return Err(self.died(format!("reading from it: {e}")));
        }
        match protocol::response(&payload)? {
            Ok(body) => Ok(body.to_vec()),
            Err(message) => Err(WorkerError::Refused(message)),
        }
    }

    fn died(&mut self, what: String) -> WorkerError {
        // Its stderr may still be in flight: a moment for the log thread to read it.
        std::thread::sleep(Duration::from_millis(50));
        // Give a crashing process a moment to be reaped, for its exit status.
        let status = (0..20).find_map(|_| match self.child.try_wait() {
            Ok(Some(s)) => Some(s.to_string()),
            _ => {
                std::thread::sleep(Duration::from_millis(10));
                None
            }
        });
        let last = self.last_log.lock().map(|l| l.clone()).unwrap_or_default();
        let mut reason = match status {
            Some(s) => format!("{what}, {s}"),
            None => what,
        };
        if !last.is_empty() {
            reason = format!("{reason}; its last words: {last}");
        }
        WorkerError::Died(reason)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    /// SHUTDOWN, then a kill if it lingers: no worker outlives the server.
    fn drop(&mut self) {
        if !self.exited() {
            let frame = protocol::frame(&protocol::request(Op::Shutdown, &[]));
            let _ = self
                .stdin
                .write_all(&frame)
                .and_then(|()| self.stdin.flush());
            let deadline = Instant::now() + EXIT_GRACE;
            while Instant::now() < deadline && !self.exited() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill();
    }
}
