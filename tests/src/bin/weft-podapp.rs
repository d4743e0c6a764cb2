//! An unchanged app for the interception tests, run inside a network
//! namespace: `weft-podapp NAME ADDR...` answers every HTTP/1.1 request on
//! each ADDR with `NAME saw PEER`, and prints `NAME got PEER REQUEST-LINE
//! MARKER` (the `x-marker` header) on stdout, so a test can see whom the app
//! saw and what reached it. Blocking std code: it knows nothing of the mesh.
//! An address written `tcp:ADDR` speaks a line protocol instead, server
//! first: it greets with `NAME tcp ready`, reads one line, answers `NAME tcp
//! echo from PEER: LINE` and closes (printing `NAME tcp got PEER LINE`).
//! `weft-podapp --send ADDR LINE` is its client: it sends LINE and prints
//! all it is answered.
//!
//! Line protocols over plain TCP, for opaque TCP through interception:
//! - `weft-podapp --greet NAME ADDR...`: a server-first server (like SMTP
//!   or MySQL): greets `220 NAME ready` as soon as a client connects, then
//!   answers each line with `250 NAME got LINE`.
//! - `weft-podapp --echo NAME ADDR...`: a client-first server: waits for a
//!   line, answers `NAME echoed LINE`, and so on.
//! - `weft-podapp --dial ADDR LINE [--speak-first] [--pause-until FILE]`: a
//!   client: connects, reads the greeting (or with `--speak-first` sends
//!   first), optionally waits (bounded) for FILE to exist with the
//!   connection open, sends LINE, reads the answer, and prints
//!   `first-byte-ms N`, `greeting TEXT` and `reply TEXT`.
//!   Every received line is also printed as `got-line TEXT`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let first = std::env::args().nth(1).unwrap_or_default();
    match first.as_str() {
        "--greet" => return lines_server(true),
        "--echo" => return lines_server(false),
        "--dial" => return dial(),
        _ => {}
    }
    let mut args = std::env::args().skip(1);
    let name = args.next().ok_or_else(|| {
        anyhow::anyhow!("usage: weft-podapp NAME [tcp:]ADDR... | weft-podapp --send ADDR LINE")
    })?;
    if name == "--send" {
        let (Some(addr), Some(line)) = (args.next(), args.next()) else {
            anyhow::bail!("usage: weft-podapp --send ADDR LINE");
        };
        return send(&addr, &line);
    }
    let mut threads = Vec::new();
    for addr in args {
        let (tcp, addr) = match addr.strip_prefix("tcp:") {
            Some(a) => (true, a.to_string()),
            None => (false, addr),
        };
        let listener = TcpListener::bind(&addr)?;
        println!("{name} listening on {addr}");
        let name = name.clone();
        threads.push(std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let name = name.clone();
                std::thread::spawn(move || {
                    let _ = if tcp {
                        echo(&name, stream)
                    } else {
                        serve(&name, stream)
                    };
                });
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// One request per connection (the reply closes it).
fn serve(name: &str, stream: TcpStream) -> std::io::Result<()> {
    let peer = stream.peer_addr()?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut marker = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("x-marker")
        {
            marker = v.trim().to_string();
        }
    }
    println!("{name} got {} {} {marker}", peer.ip(), request_line.trim());
    let body = format!("{name} saw {}", peer.ip());
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// `--greet` / `--echo NAME ADDR...`: one thread per connection.
fn lines_server(greet: bool) -> anyhow::Result<()> {
    let mut args = std::env::args().skip(2);
    let name = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: weft-podapp --greet|--echo NAME ADDR..."))?;
    let mut threads = Vec::new();
    for addr in args {
        let listener = TcpListener::bind(&addr)?;
        println!("{name} listening on {addr}");
        let name = name.clone();
        threads.push(std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let name = name.clone();
                std::thread::spawn(move || {
                    let _ = serve_lines(&name, stream, greet);
                });
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn serve_lines(name: &str, mut stream: TcpStream, greet: bool) -> std::io::Result<()> {
    let peer = stream.peer_addr()?;
    if greet {
        write!(stream, "220 {name} ready\r\n")?;
        stream.flush()?;
    }
    let reader = BufReader::new(stream.try_clone()?);
    for line in reader.lines() {
        let line = line?;
        let line = line.trim_end();
        println!("{name} got {} {line}", peer.ip());
        if greet {
            write!(stream, "250 {name} got {line}\r\n")?;
        } else {
            writeln!(stream, "{name} echoed {line}")?;
        }
        stream.flush()?;
    }
    Ok(())
}

/// `--dial ADDR LINE [--speak-first] [--pause-until FILE]`.
fn dial() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let (Some(addr), Some(line)) = (args.first(), args.get(1)) else {
        anyhow::bail!("usage: weft-podapp --dial ADDR LINE [--speak-first] [--pause-until FILE]");
    };
    let speak_first = args.iter().any(|a| a == "--speak-first");
    let pause = args
        .iter()
        .position(|a| a == "--pause-until")
        .and_then(|i| args.get(i + 1));
    let start = Instant::now();
    let stream = TcpStream::connect(addr.as_str())?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    let mut read_line = |what: &str| -> anyhow::Result<String> {
        let mut got = String::new();
        if reader.read_line(&mut got)? == 0 {
            anyhow::bail!("the connection closed before the {what}");
        }
        let got = got.trim_end().to_string();
        println!("got-line {got}");
        Ok(got)
    };
    if !speak_first {
        let greeting = read_line("greeting")?;
        println!("first-byte-ms {}", start.elapsed().as_millis());
        println!("greeting {greeting}");
    }
    if let Some(file) = pause {
        // Bounded: a test that never writes the file fails on our exit.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::path::Path::new(file).exists() {
            if Instant::now() >= deadline {
                anyhow::bail!("{file} did not appear in 20s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let sent = Instant::now();
    writeln!(stream, "{line}")?;
    stream.flush()?;
    let reply = read_line("reply")?;
    if speak_first {
        println!("first-byte-ms {}", sent.elapsed().as_millis());
    }
    println!("reply {reply}");
    Ok(())
}

/// The line protocol's server side: greeting, one line, its echo.
fn echo(name: &str, mut stream: TcpStream) -> std::io::Result<()> {
    let peer = stream.peer_addr()?;
    writeln!(stream, "{name} tcp ready")?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?).read_line(&mut line)?;
    let line = line.trim();
    println!("{name} tcp got {} {line}", peer.ip());
    writeln!(stream, "{name} tcp echo from {}: {line}", peer.ip())?;
    stream.flush()
}

/// The line protocol's client: sends `line`, prints the answer to the end
/// (bounded: a peer that never closes ends the read after 10 s).
fn send(addr: &str, line: &str) -> anyhow::Result<()> {
    use std::io::Read;
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    writeln!(stream, "{line}")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    print!("{answer}");
    Ok(())
}
