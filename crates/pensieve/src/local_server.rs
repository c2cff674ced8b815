//! Find a running server, or start `pensieve serve` as a child for as long as it is needed.
//!
//! Used by the commands that talk to a server (`pensieve chat`, `pensieve claude`): a server
//! already answering at the URL is used as it is; on a loopback URL with nothing there, one is
//! started from this same binary, in a process group of its own (a Ctrl-C meant for the chat or
//! for Claude Code does not reach it), its output going to a log file, and it is stopped when the
//! [`LocalServer`] is dropped.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How often a starting server's /health is asked.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How long a started server gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Lines of the log shown when a started server exits before it is ready.
const LOG_TAIL_LINES: usize = 20;

/// How to find or start a server.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The server's base URL, e.g. `http://127.0.0.1:7777`.
    pub base_url: String,
    /// The key clients send; a server started here requires it (given as PENSIEVE_API_KEY).
    pub api_key: Option<String>,
    /// Arguments for `pensieve serve` (model, ctx, ...), after the `--host H --port P` derived
    /// from `base_url`.
    pub serve_args: Vec<OsString>,
    /// The started server's stdout and stderr are appended here, never shown on the terminal.
    pub log_path: PathBuf,
    /// How long a started server may take to answer /health (loading a big model takes a while).
    pub startup_timeout: Duration,
}

impl LaunchOptions {
    /// Options for `base_url` with the defaults: no key, no serve arguments, the log in
    /// [`default_log_path`], 10 minutes to start.
    pub fn new(base_url: impl Into<String>) -> LaunchOptions {
        LaunchOptions {
            base_url: base_url.into(),
            api_key: None,
            serve_args: Vec::new(),
            log_path: default_log_path(),
            startup_timeout: Duration::from_secs(600),
        }
    }
}

/// `<data dir>/logs/serve.log`.
pub fn default_log_path() -> PathBuf {
    crate::paths::data_dir().join("logs").join("serve.log")
}

/// A server that answers at `base_url`: found running, or started here (and then stopped, with
/// SIGTERM, up to 15 s, then SIGKILL, when this is dropped).
#[derive(Debug)]
pub struct LocalServer {
    /// The base URL, without a trailing slash.
    pub base_url: String,
    pub api_key: Option<String>,
    child: Option<Child>,
    stop_grace: Duration,
}

impl LocalServer {
    /// Whether this process started the server (and so stops it on drop).
    pub fn started_here(&self) -> bool {
        self.child.is_some()
    }

    /// Stop a server started here now (what drop does); a no-op otherwise.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child, self.stop_grace);
        }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A server already answering `GET {base_url}/health` with 200 is used as is. Otherwise, on a
/// loopback URL, `pensieve serve --host H --port P <serve_args>` is started (this binary) and
/// waited for: it fails with the child's exit status and the end of its log if the child exits
/// first, and stops the child and fails after `startup_timeout` (or a Ctrl-C caught by
/// [`catch_sigint`]). A non-loopback URL with nothing answering is an error.
///
/// Call it from the main thread (or one that outlives the server): on Linux a started server
/// gets SIGTERM when the thread that started it dies.
pub fn ensure(opts: LaunchOptions) -> anyhow::Result<LocalServer> {
    let target = Target::parse(&opts.base_url)?;
    let client = health_client(&target)?;
    if healthy(&client, &target.base) {
        return Ok(LocalServer {
            base_url: target.base,
            api_key: opts.api_key,
            child: None,
            stop_grace: STOP_GRACE,
        });
    }
    if !target.loopback {
        bail!(
            "no server answers at {} (GET /health); a server is started automatically only on a \
             loopback address such as http://127.0.0.1:7777",
            target.base
        );
    }
    if target.https {
        bail!(
            "no server answers at {}; a server started here speaks plain HTTP: use an http:// URL",
            target.base
        );
    }
    let exe = std::env::current_exe().context("cannot find the pensieve binary")?;
    let mut command = Command::new(exe);
    command
        .arg("serve")
        .arg("--host")
        .arg(target.listen_ip.to_string())
        .arg("--port")
        .arg(target.port.to_string())
        .args(&opts.serve_args);
    start(command, &opts, target, &client)
}

/// Whether a server answers `GET {base_url}/health` with 200 now.
pub fn is_running(base_url: &str) -> anyhow::Result<bool> {
    let target = Target::parse(base_url)?;
    Ok(healthy(&health_client(&target)?, &target.base))
}

/// Spawn `command` as the server and wait until /health answers.
fn start(
    mut command: Command,
    opts: &LaunchOptions,
    target: Target,
    client: &reqwest::blocking::Client,
) -> anyhow::Result<LocalServer> {
    let log_path = opts.log_path.clone();
    if let Some(dir) = log_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    // Only this run's lines are shown if it fails.
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let log_err = log
        .try_clone()
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    match &opts.api_key {
        Some(key) => command.env("PENSIEVE_API_KEY", key),
        None => command.env_remove("PENSIEVE_API_KEY"),
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    isolate(&mut command);
    eprintln!(
        "Starting a server on {} (log: {})",
        target.base,
        log_path.display()
    );
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {:?}", command.get_program()))?;
    let mut server = LocalServer {
        base_url: target.base.clone(),
        api_key: opts.api_key.clone(),
        child: Some(child),
        stop_grace: STOP_GRACE,
    };
    let started = Instant::now();
    loop {
        let child = server
            .child
            .as_mut()
            .expect("the child is there until stopped");
        if let Some(status) = child.try_wait().context("cannot watch the server")? {
            server.child = None;
            // Someone else's server may have taken the port meanwhile.
            if healthy(client, &target.base) {
                return Ok(server);
            }
            bail!(
                "the server exited before it was ready ({}); the end of {}:\n{}",
                describe(status),
                log_path.display(),
                log_tail(&log_path, log_start, LOG_TAIL_LINES)
            );
        }
        if healthy(client, &target.base) {
            return Ok(server);
        }
        if take_sigint() {
            server.stop();
            bail!("interrupted while the server was starting");
        }
        if started.elapsed() >= opts.startup_timeout {
            server.stop();
            bail!(
                "the server did not answer at {} within {} s; it was stopped (its log: {})",
                target.base,
                opts.startup_timeout.as_secs(),
                log_path.display()
            );
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Its own process group, so that the terminal's Ctrl-C goes to us only; on Linux, SIGTERM when
/// the thread that started it dies, so that nothing is left running if we are killed.
#[cfg(unix)]
fn isolate(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    command.process_group(0);
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `getpid` is async-signal-safe.
        let parent = unsafe { libc::getpid() };
        // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the parent exited"));
                }
                Ok(())
            });
        }
    }
}

#[cfg(windows)]
fn isolate(command: &mut Command) {
    use std::os::windows::process::CommandExt;
    const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
    command.creation_flags(CREATE_NEW_PROCESS_GROUP);
}

#[cfg(not(any(unix, windows)))]
fn isolate(_command: &mut Command) {}

/// SIGTERM, up to `grace` to exit, then SIGKILL to its whole process group; always reaped.
fn stop_child(mut child: Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    #[cfg(unix)]
    {
        let pid = child.id() as libc::pid_t;
        // SAFETY: plain syscall; the child is not reaped yet, so the pid is still ours.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => break,
            }
        }
        eprintln!(
            "The server did not stop within {} s; killing it",
            grace.as_secs()
        );
        // SAFETY: as above; the group id is the child's pid (process_group(0)).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    #[cfg(not(unix))]
    let _ = grace;
    let _ = child.kill();
    let _ = child.wait();
}

fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => status.to_string(),
    }
}

/// The last `lines` lines written to `path` after byte `from`.
fn log_tail(path: &Path, from: u64, lines: usize) -> String {
    let mut text = Vec::new();
    let read = File::open(path).and_then(|mut f| {
        f.seek(SeekFrom::Start(from))?;
        f.read_to_end(&mut text)
    });
    if read.is_err() {
        return "  <the log cannot be read>".to_string();
    }
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    if all.is_empty() {
        return "  <empty>".to_string();
    }
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the base URL says about where the server is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// The URL without a trailing slash.
    base: String,
    https: bool,
    loopback: bool,
    /// What `serve --host` gets: the URL's address, 127.0.0.1 for `localhost`.
    listen_ip: IpAddr,
    port: u16,
}

impl Target {
    fn parse(base_url: &str) -> anyhow::Result<Target> {
        let trimmed = base_url.trim().trim_end_matches('/');
        let url = reqwest::Url::parse(trimmed)
            .with_context(|| format!("invalid server URL {base_url:?}"))?;
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            other => bail!("invalid server URL {base_url:?}: {other}:// is not http or https"),
        };
        let host = url
            .host_str()
            .with_context(|| format!("invalid server URL {base_url:?}: no host"))?;
        // An IPv6 literal keeps its brackets in the URL.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let (loopback, listen_ip) = match bare.parse::<IpAddr>() {
            Ok(ip) => (ip.is_loopback(), ip),
            Err(_) => {
                let name = bare.to_ascii_lowercase();
                let local = name == "localhost" || name.ends_with(".localhost");
                (local, IpAddr::V4(Ipv4Addr::LOCALHOST))
            }
        };
        let port = url
            .port_or_known_default()
            .with_context(|| format!("invalid server URL {base_url:?}: no port"))?;
        Ok(Target {
            base: trimmed.to_string(),
            https,
            loopback,
            listen_ip,
            port,
        })
    }
}

fn health_client(target: &Target) -> anyhow::Result<reqwest::blocking::Client> {
    let mut builder = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10));
    if target.loopback {
        builder = builder.no_proxy();
    }
    builder.build().context("cannot create an HTTP client")
}

/// Whether `GET {base}/health` answers 200.
fn healthy(client: &reqwest::blocking::Client, base: &str) -> bool {
    client
        .get(format!("{base}/health"))
        .send()
        .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
}

static SIGINT_CAUGHT: AtomicBool = AtomicBool::new(false);

/// From now on a SIGINT (Ctrl-C in a terminal outside raw mode) only sets a flag that
/// [`take_sigint`] reads, instead of ending the process: so that the process can stop a server
/// it started. [`ensure`] gives up when the flag is set while a server starts. No-op off Unix.
pub fn catch_sigint() {
    #[cfg(unix)]
    {
        extern "C" fn on_sigint(_: libc::c_int) {
            SIGINT_CAUGHT.store(true, Ordering::SeqCst);
        }
        // SAFETY: the handler only stores to an atomic; SA_RESTART keeps blocking calls going.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigint as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
        }
    }
}

/// Whether a SIGINT came since the last call (with [`catch_sigint`] in force).
pub fn take_sigint() -> bool {
    SIGINT_CAUGHT.swap(false, Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    #[test]
    fn parses_urls() {
        let t = Target::parse("http://127.0.0.1:7777/").unwrap();
        assert_eq!(t.base, "http://127.0.0.1:7777");
        assert!(t.loopback && !t.https);
        assert_eq!((t.listen_ip, t.port), ("127.0.0.1".parse().unwrap(), 7777));

        let t = Target::parse("http://localhost:8080").unwrap();
        assert!(t.loopback);
        assert_eq!((t.listen_ip, t.port), ("127.0.0.1".parse().unwrap(), 8080));

        let t = Target::parse("http://[::1]:9000").unwrap();
        assert!(t.loopback);
        assert_eq!((t.listen_ip, t.port), ("::1".parse().unwrap(), 9000));

        let t = Target::parse("http://127.0.0.1").unwrap();
        assert_eq!(t.port, 80);

        let t = Target::parse("https://models.example.com").unwrap();
        assert!(!t.loopback && t.https);
        assert_eq!(t.port, 443);

        let t = Target::parse("http://192.168.1.5:7777").unwrap();
        assert!(!t.loopback);

        assert!(Target::parse("ftp://127.0.0.1:21").is_err());
        assert!(Target::parse("127.0.0.1:7777").is_err());
        assert!(Target::parse("not a url").is_err());
    }

    /// A server that answers every request with `status` on a thread; its URL.
    fn tiny_server(status: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if line == "\r\n" {
                        break;
                    }
                    line.clear();
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
            }
        });
        url
    }

    fn closed_port_url() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        url
    }

    fn options(url: &str, dir: &Path) -> LaunchOptions {
        LaunchOptions {
            log_path: dir.join("logs").join("serve.log"),
            startup_timeout: Duration::from_secs(2),
            ..LaunchOptions::new(url)
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "pensieve-local-server-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn health_check() {
        let target = Target::parse(&tiny_server("200 OK")).unwrap();
        let client = health_client(&target).unwrap();
        assert!(healthy(&client, &target.base));

        let target = Target::parse(&tiny_server("503 Service Unavailable")).unwrap();
        assert!(!healthy(&client, &target.base));

        let target = Target::parse(&closed_port_url()).unwrap();
        assert!(!healthy(&client, &target.base));
    }

    #[test]
    fn a_running_server_is_used_as_is() {
        let url = tiny_server("200 OK");
        let dir = temp_dir("running");
        let server = ensure(LaunchOptions {
            api_key: Some("k".into()),
            ..options(&format!("{url}/"), &dir)
        })
        .unwrap();
        assert!(!server.started_here());
        assert_eq!(server.base_url, url);
        assert_eq!(server.api_key.as_deref(), Some("k"));
        assert!(
            !dir.exists(),
            "nothing is logged for a server found running"
        );
    }

    #[test]
    fn a_silent_remote_server_is_an_error() {
        // TEST-NET-1 on a port nothing answers; the 3 s connect timeout bounds it.
        let dir = temp_dir("remote");
        let err = ensure(options("http://192.0.2.1:9", &dir)).unwrap_err();
        assert!(
            err.to_string()
                .contains("no server answers at http://192.0.2.1:9"),
            "{err:#}"
        );
    }

    #[cfg(unix)]
    fn fake_server(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.arg("-c").arg(script);
        command
    }

    #[cfg(unix)]
    #[test]
    fn a_child_that_exits_early_is_reported_with_its_log() {
        let url = closed_port_url();
        let dir = temp_dir("exits");
        let opts = options(&url, &dir);
        let target = Target::parse(&url).unwrap();
        let client = health_client(&target).unwrap();
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        std::fs::write(&opts.log_path, "an earlier run\n").unwrap();
        let err = start(
            fake_server("echo loading; echo 'cannot load model' >&2; exit 3"),
            &opts,
            target,
            &client,
        )
        .unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("exit status 3"), "{message}");
        assert!(message.contains("cannot load model"), "{message}");
        assert!(message.contains("loading"), "{message}");
        assert!(!message.contains("an earlier run"), "{message}");
        let log = std::fs::read_to_string(&opts.log_path).unwrap();
        assert!(log.starts_with("an earlier run\nloading\n"), "{log}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn a_child_that_never_answers_is_stopped_on_timeout() {
        let url = closed_port_url();
        let dir = temp_dir("timeout");
        let opts = LaunchOptions {
            startup_timeout: Duration::from_millis(600),
            ..options(&url, &dir)
        };
        let target = Target::parse(&url).unwrap();
        let client = health_client(&target).unwrap();
        let pid_file = dir.join("pid");
        let script = format!("echo $$ > {}; exec sleep 60", pid_file.display());
        let started = Instant::now();
        let err = start(fake_server(&script), &opts, target, &client).unwrap_err();
        assert!(err.to_string().contains("did not answer"), "{err:#}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid: libc::pid_t = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Reaped: no such process any more.
        // SAFETY: signal 0 only checks for existence.
        assert_eq!(unsafe { libc::kill(pid, 0) }, -1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn drop_stops_a_child_that_ignores_sigterm() {
        let dir = temp_dir("drop");
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("pid");
        // The shell ignores SIGTERM; its `sleep` (same group) is killed with it.
        let script = format!(
            "trap '' TERM; sleep 60 & echo $! > {}; wait",
            pid_file.display()
        );
        let mut command = fake_server(&script);
        command.stdin(Stdio::null());
        isolate(&mut command);
        let child = command.spawn().unwrap();
        let shell = child.id() as libc::pid_t;
        let server = LocalServer {
            base_url: "http://127.0.0.1:1".into(),
            api_key: None,
            child: Some(child),
            stop_grace: Duration::from_millis(500),
        };
        assert!(server.started_here());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pid_file.exists() || std::fs::read_to_string(&pid_file).unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the script did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        let sleeper: libc::pid_t = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let started = Instant::now();
        drop(server);
        assert!(started.elapsed() < Duration::from_secs(5));
        // SAFETY: signal 0 only checks for existence.
        assert_eq!(unsafe { libc::kill(shell, 0) }, -1, "the shell is gone");
        // The sleeper was killed with the group; reaped by init (or a subreaper) soon after.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{sleeper}/stat"));
            let gone = match stat {
                Err(_) => true,
                Ok(s) => s.split_whitespace().nth(2) == Some("Z"),
            };
            if gone || !cfg!(target_os = "linux") {
                break;
            }
            assert!(Instant::now() < deadline, "the group was not killed");
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
