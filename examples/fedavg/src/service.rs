//! The plumbing both programs share: settings from environment variables, the listening socket
//! on `127.0.0.1:$PORT`, a line server (one thread per connection, one reply line per request
//! line), and a clean exit on SIGTERM.
//!
//! SIGTERM needs a handler because in a `FROM scratch` container the program is PID 1, and the
//! kernel ignores signals PID 1 does not handle: without one, `docker stop` waits 10 s and kills.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::str::FromStr;
use std::sync::Arc;
use std::thread;

/// The longest request line served; a model is about 13 KB, a state line with a 1000-round
/// history under 48 KB.
pub const MAX_LINE: u64 = 64 * 1024;

/// A setting the program cannot start with.
#[derive(Debug)]
pub enum StartError {
    /// An environment variable holds something unusable.
    Env {
        name: String,
        value: String,
        want: &'static str,
    },
    /// The listening socket could not be opened.
    Bind { addr: String, source: io::Error },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Env { name, value, want } => {
                write!(f, "{name}=\"{value}\" is not usable: set it to {want}, or unset it for the default")
            }
            StartError::Bind { addr, source } => {
                write!(
                    f,
                    "cannot listen on {addr}: {source} (set PORT to a free port, or 0 for any)"
                )
            }
        }
    }
}

impl std::error::Error for StartError {}

/// The value of `name` parsed as `T`, `default` when unset; `want` describes a good value.
pub fn var<T: FromStr>(name: &str, default: T, want: &'static str) -> Result<T, StartError> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(value) => value.trim().parse().map_err(|_| StartError::Env {
            name: name.to_string(),
            value,
            want,
        }),
    }
}

/// Listens on 127.0.0.1:$PORT (any free port when PORT is unset) and says where on stderr.
pub fn listen() -> Result<TcpListener, StartError> {
    let port: u16 = var("PORT", 0, "a TCP port number")?;
    let addr = format!("127.0.0.1:{port}");
    let listener = TcpListener::bind(&addr).map_err(|source| StartError::Bind {
        addr: addr.clone(),
        source,
    })?;
    if let Ok(local) = listener.local_addr() {
        eprintln!("listening on {local}");
    }
    Ok(listener)
}

/// Prints why the program cannot start and exits with status 2.
pub fn fail(what: &str, err: &dyn fmt::Display) -> ! {
    eprintln!("{what}: {err}");
    std::process::exit(2)
}

/// Serves `listener` forever: every request line gets `reply(line)` and a newline back.
pub fn serve_lines<F>(listener: TcpListener, reply: F)
where
    F: Fn(&str) -> String + Send + Sync + 'static,
{
    let reply = Arc::new(reply);
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let reply = Arc::clone(&reply);
                thread::spawn(move || {
                    if let Err(e) = serve_connection(stream, &*reply) {
                        eprintln!("connection ended: {e}");
                    }
                });
            }
            Err(e) => eprintln!("accept failed: {e}"),
        }
    }
}

fn serve_connection(stream: TcpStream, reply: &dyn Fn(&str) -> String) -> io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        let n = input.by_ref().take(MAX_LINE).read_line(&mut line)?;
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') && n as u64 == MAX_LINE {
            writeln!(out, "ERR line longer than {MAX_LINE} bytes")?;
            return Ok(());
        }
        writeln!(out, "{}", reply(line.trim_end()))?;
    }
}

extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn _exit(status: i32) -> !;
}

extern "C" fn exit_now(_signum: i32) {
    // SAFETY: _exit is async-signal-safe. Nothing is lost: Rust's stdout is line-buffered, so
    // every log line is already written.
    unsafe { _exit(0) }
}

/// Makes SIGTERM and SIGINT end the process at once with status 0.
pub fn exit_on_sigterm() {
    const SIGINT: i32 = 2;
    const SIGTERM: i32 = 15;
    // SAFETY: installs a handler that only calls an async-signal-safe function.
    unsafe {
        signal(SIGINT, exit_now);
        signal(SIGTERM, exit_now);
    }
}
