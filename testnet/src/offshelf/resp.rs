//! Just enough of redis's protocol (RESP) to write keys, read them back and ask `INFO`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::bail;

/// One RESP command as an array of bulk strings.
pub fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// A RESP reply: a simple string (`+`), an error (`-`), an integer (`:`) or a bulk string
/// (`$`, `None` for the null bulk string).
#[derive(Debug, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
}

/// A connection to redis, through whatever address it is given.
pub struct Redis {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Redis {
    /// Connects to `addr`; a reply may take up to `wait` (a call held through a move waits as
    /// long as the move takes: the bound only keeps a lost answer from hanging the client).
    pub fn connect(addr: &str, wait: Duration) -> std::io::Result<Redis> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(wait))?;
        Ok(Redis {
            w: s.try_clone()?,
            r: BufReader::new(s),
        })
    }

    pub fn call(&mut self, args: &[&str]) -> std::io::Result<Resp> {
        self.w.write_all(&command(args))?;
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let body = line
            .strip_suffix("\r\n")
            .ok_or_else(|| bad("a reply line without CRLF"))?;
        let (kind, rest) = body
            .split_at_checked(1)
            .ok_or_else(|| bad("an empty reply"))?;
        Ok(match kind {
            "+" => Resp::Simple(rest.to_string()),
            "-" => Resp::Error(rest.to_string()),
            ":" => Resp::Int(rest.parse().map_err(|_| bad("a bad integer"))?),
            "$" => {
                let len: i64 = rest.parse().map_err(|_| bad("a bad bulk length"))?;
                if len < 0 {
                    Resp::Bulk(None)
                } else {
                    let len = usize::try_from(len).map_err(|_| bad("a huge bulk"))?;
                    if len > 1 << 20 {
                        return Err(bad("a bulk string over 1 MiB"));
                    }
                    let mut buf = vec![0; len + 2];
                    self.r.read_exact(&mut buf)?;
                    buf.truncate(len);
                    Resp::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
                }
            }
            _ => return Err(bad("a reply of an unknown kind")),
        })
    }
}

/// Runs `args` on redis at `addr`, reconnecting and sending it again while the connection
/// fails (only for commands that may run twice), for at most `limit`.
pub fn call_retrying(
    conn: &mut Option<Redis>,
    addr: &str,
    args: &[&str],
    limit: Duration,
) -> anyhow::Result<Resp> {
    let deadline = Instant::now() + limit;
    loop {
        let reply = match conn {
            Some(c) => c.call(args),
            None => Redis::connect(addr, limit).and_then(|mut c| {
                let r = c.call(args);
                *conn = Some(c);
                r
            }),
        };
        match reply {
            Ok(r) => return Ok(r),
            Err(e) => {
                *conn = None;
                if Instant::now() >= deadline {
                    bail!("redis at {addr} did not answer {args:?} within {limit:?}: {e}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// redis's `run_id`: random, made when the server starts.
pub fn run_id(addr: &str, limit: Duration) -> anyhow::Result<String> {
    let mut conn = None;
    let Resp::Bulk(Some(info)) = call_retrying(&mut conn, addr, &["INFO", "server"], limit)? else {
        bail!("INFO server gave no text");
    };
    match info.lines().find_map(|l| l.strip_prefix("run_id:")) {
        Some(id) => Ok(id.trim().to_string()),
        None => bail!("no run_id in INFO: {info}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_is_an_array_of_bulk_strings() {
        assert_eq!(
            command(&["SET", "k1", "10"]),
            b"*3\r\n$3\r\nSET\r\n$2\r\nk1\r\n$2\r\n10\r\n"
        );
    }
}
